// pcgen playground: a small JSON Schema checker that runs in the page, independent of the server's automaton,
// so the JSON preset shows whether the output really is valid. It covers the keywords pcgen compiles: type,
// enum, const, properties / required / additionalProperties / patternProperties, items / prefixItems,
// minItems / maxItems / uniqueItems, minLength / maxLength / pattern / format (date, date-time, time, email,
// uri, uuid), minimum / maximum / exclusive bounds / multipleOf, anyOf / oneOf / allOf / not, and local $ref.
// checkSchema(schema, value) returns a list of "path: problem" strings, empty when the value is valid.
"use strict";

const FORMATS = {
  date: /^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$/,
  time: /^([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)(\.\d+)?(Z|z|[+-]([01]\d|2[0-3]):[0-5]\d)$/,
  "date-time": /^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])[Tt ]([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)(\.\d+)?(Z|z|[+-]([01]\d|2[0-3]):[0-5]\d)$/,
  email: /^[^@\s]+@[^@\s]+$/,
  uri: /^[A-Za-z][A-Za-z0-9+.-]*:[^\s]*$/,
  uuid: /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/,
};

function jsonType(value) {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  if (typeof value === "number") return Number.isInteger(value) ? "integer" : "number";
  return typeof value; // string, boolean, object
}

function sameValue(a, b) {
  return JSON.stringify(canonical(a)) === JSON.stringify(canonical(b));
}

function canonical(value) {
  // objects compared whatever their key order
  if (Array.isArray(value)) return value.map(canonical);
  if (value && typeof value === "object") {
    return Object.keys(value).sort().reduce((out, k) => { out[k] = canonical(value[k]); return out; }, {});
  }
  return value;
}

function resolveRef(root, ref) {
  if (!ref.startsWith("#")) throw new Error(`only local $ref is supported, got ${ref}`);
  return ref.slice(1).split("/").filter(Boolean)
    .map((p) => decodeURIComponent(p).replace(/~1/g, "/").replace(/~0/g, "~"))
    .reduce((node, key) => (node === undefined ? undefined : node[key]), root);
}

function typeMatches(type, value) {
  const actual = jsonType(value);
  return (Array.isArray(type) ? type : [type]).some((t) => t === actual || (t === "number" && actual === "integer"));
}

function checkString(s, value, path, errors) {
  const length = [...value].length; // code points, as JSON Schema counts them
  if (s.minLength !== undefined && length < s.minLength) errors.push(`${path}: shorter than ${s.minLength}`);
  if (s.maxLength !== undefined && length > s.maxLength) errors.push(`${path}: longer than ${s.maxLength}`);
  if (s.pattern !== undefined && !new RegExp(s.pattern, "u").test(value)) errors.push(`${path}: does not match ${s.pattern}`);
  if (s.format && FORMATS[s.format] && !FORMATS[s.format].test(value)) errors.push(`${path}: not a ${s.format}`);
}

function checkNumber(s, value, path, errors) {
  if (s.minimum !== undefined && value < s.minimum) errors.push(`${path}: below ${s.minimum}`);
  if (s.maximum !== undefined && value > s.maximum) errors.push(`${path}: above ${s.maximum}`);
  if (typeof s.exclusiveMinimum === "number" && value <= s.exclusiveMinimum) errors.push(`${path}: not above ${s.exclusiveMinimum}`);
  if (typeof s.exclusiveMaximum === "number" && value >= s.exclusiveMaximum) errors.push(`${path}: not below ${s.exclusiveMaximum}`);
  if (s.multipleOf !== undefined && Math.abs(value / s.multipleOf - Math.round(value / s.multipleOf)) > 1e-9) {
    errors.push(`${path}: not a multiple of ${s.multipleOf}`);
  }
}

function checkArray(s, value, path, errors, root) {
  if (s.minItems !== undefined && value.length < s.minItems) errors.push(`${path}: fewer than ${s.minItems} items`);
  if (s.maxItems !== undefined && value.length > s.maxItems) errors.push(`${path}: more than ${s.maxItems} items`);
  const prefix = s.prefixItems || (Array.isArray(s.items) ? s.items : []);
  const rest = Array.isArray(s.items) ? s.additionalItems : s.items;
  value.forEach((item, i) => {
    const sub = i < prefix.length ? prefix[i] : rest;
    if (sub !== undefined) check(sub, item, `${path}[${i}]`, errors, root);
  });
  if (s.uniqueItems && value.some((a, i) => value.slice(i + 1).some((b) => sameValue(a, b)))) {
    errors.push(`${path}: items are not unique`);
  }
}

function checkObject(s, value, path, errors, root) {
  for (const key of s.required || []) if (!(key in value)) errors.push(`${path}: missing required property "${key}"`);
  const props = s.properties || {};
  const patterns = Object.entries(s.patternProperties || {});
  for (const [key, item] of Object.entries(value)) {
    const where = `${path}.${key}`;
    let known = false;
    if (key in props) { known = true; check(props[key], item, where, errors, root); }
    for (const [pattern, sub] of patterns) {
      if (new RegExp(pattern, "u").test(key)) { known = true; check(sub, item, where, errors, root); }
    }
    if (!known && s.additionalProperties !== undefined) check(s.additionalProperties, item, where, errors, root);
  }
  const count = Object.keys(value).length;
  if (s.minProperties !== undefined && count < s.minProperties) errors.push(`${path}: fewer than ${s.minProperties} properties`);
  if (s.maxProperties !== undefined && count > s.maxProperties) errors.push(`${path}: more than ${s.maxProperties} properties`);
}

function check(s, value, path, errors, root) {
  if (s === true || s === undefined) return;
  if (s === false) { errors.push(`${path}: not allowed`); return; }
  if (s.$ref !== undefined) {
    const target = resolveRef(root, s.$ref);
    if (target === undefined) { errors.push(`${path}: $ref ${s.$ref} not found`); return; }
    check(target, value, path, errors, root);
  }
  if (s.type !== undefined && !typeMatches(s.type, value)) { errors.push(`${path}: not of type ${s.type}`); return; }
  if (s.enum !== undefined && !s.enum.some((e) => sameValue(e, value))) errors.push(`${path}: not one of the enum values`);
  if (s.const !== undefined && !sameValue(s.const, value)) errors.push(`${path}: not ${JSON.stringify(s.const)}`);
  const type = jsonType(value);
  if (type === "string") checkString(s, value, path, errors);
  else if (type === "number" || type === "integer") checkNumber(s, value, path, errors);
  else if (type === "array") checkArray(s, value, path, errors, root);
  else if (type === "object") checkObject(s, value, path, errors, root);
  for (const sub of s.allOf || []) check(sub, value, path, errors, root);
  const passing = (subs) => subs.filter((sub) => { const e = []; check(sub, value, path, e, root); return !e.length; }).length;
  if (s.anyOf && passing(s.anyOf) === 0) errors.push(`${path}: matches none of anyOf`);
  if (s.oneOf && passing(s.oneOf) !== 1) errors.push(`${path}: matches ${passing(s.oneOf)} of oneOf, not exactly one`);
  if (s.not !== undefined && passing([s.not]) === 1) errors.push(`${path}: matches the schema under not`);
}

function checkSchema(schema, value) {
  const errors = [];
  check(schema, value, "$", errors, schema);
  return errors;
}

window.checkSchema = checkSchema;

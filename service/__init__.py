"""pcgen's REST service: `pcgen serve` hosts the LM and the HMM behind FastAPI (see service.app)."""

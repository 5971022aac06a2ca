"""Log-space constants shared by the guide, the decoders and the scores (one definition)."""

NEG_INF = float("-inf")  # log 0: a token or state that cannot occur

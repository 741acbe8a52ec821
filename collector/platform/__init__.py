"""The upstream platform (agent open API v2.0): endpoint table, signing, typed models, async client."""

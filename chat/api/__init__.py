"""The OpenAI-compatible API (docs/api.md): `views` answers `/v1/...`; `keys` checks who calls,
`model_ids` maps model ids to personas, `requests` checks and queues a completion, `follow`
reads its reply as it is written, `answers` shapes the reply as OpenAI's bodies and chunks."""

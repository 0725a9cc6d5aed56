"""Service: the chat API, the LLM client, the refusal policy and the embedded model server."""

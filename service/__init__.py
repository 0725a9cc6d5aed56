"""The chat API (layer 4, a front) over its answer core (layer 3: ``answering``, ``refusal_policy``,
``injection``, ``protocols``) and its clients (layer 2: ``llm_client``, the only code that speaks
TGI/OpenAI HTTP, and ``chat_template``). The model server is ``candor.model_server``."""

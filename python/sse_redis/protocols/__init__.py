"""One Redis log, the protocols clients already speak (issue 16): each module
serves the runs stored by sse-redis under another system's resume contract,
as Starlette routes (``routes(reader, *, control=None, authorize=None)``),
over the serving core (``sse_redis.serving``).

* ``sse_redis.protocols.openai``: the OpenAI Responses streaming resume
  (``GET /v1/responses/{id}?stream=true&starting_after=N``, cancel);
* ``sse_redis.protocols.langgraph``: LangGraph Server's join-stream;
* ``sse_redis.protocols.durable_streams``: the read side of Durable Streams.

``docs/protocols.md`` maps each protocol's fields, headers and end conditions
onto the stored log, and says what the log cannot give.
"""

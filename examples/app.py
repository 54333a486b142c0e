"""The example FastAPI app (the code lives in ``sse_redis.example_app`` so the
CLI's ``sse-redis serve`` ships it).  Run against your own Redis with:

    SSE_REDIS_URL=redis://localhost:6379/0 uvicorn examples.app:app
"""

import os

from sse_redis.example_app import create_app

app = create_app(os.environ.get("SSE_REDIS_URL", "redis://127.0.0.1:6379/0"))

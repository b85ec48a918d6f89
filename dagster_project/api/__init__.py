"""The observatory operations API (FastAPI): telescopes report what they observed and which files they wrote.

``app.create_app`` builds it; ``python -m dagster_project api`` serves it (uvicorn, 127.0.0.1:8000). Critical
writes are buffered in the durable journal (``dagster_project.journal``) and applied by its replayer;
``smart_query`` merges journal and catalog for reads; ``auth`` the clients' bearer tokens and scopes;
``routers/`` one module per resource of the seed.
"""

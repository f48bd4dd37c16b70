"""The HTTP API: one router per resource under backend/api/routers, assembled by backend.api.app.create_app."""

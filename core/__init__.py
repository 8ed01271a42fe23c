"""The shared kit every app builds on: RFC 9457 errors, middleware, plain SQL helpers, pagination,
filters, serializer and schema bases, rate limits, parsers, validators and the health check.

It imports no app of the project (docs/architecture.md).
"""

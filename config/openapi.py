"""OpenAPI: every operation documents its problem responses and the API-key scheme."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from rest_framework import serializers


class ProblemFieldErrorSerializer(serializers.Serializer):
    field = serializers.CharField(
        allow_null=True, help_text="Dotted path of the field, null for the whole body."
    )
    code = serializers.CharField(help_text="Machine-readable rule, e.g. required, max_length.")
    message = serializers.CharField()


class ProblemSerializer(serializers.Serializer):
    """RFC 9457 problem document."""

    type = serializers.CharField(help_text="urn:taskforge:problem:<kind>")
    title = serializers.CharField()
    status = serializers.IntegerField()
    detail = serializers.CharField()
    instance = serializers.CharField(allow_null=True)
    request_id = serializers.CharField(allow_null=True)
    errors = ProblemFieldErrorSerializer(many=True, required=False)


ERROR_DESCRIPTIONS = {
    "400": "Invalid input (problem document with an `errors` list)",
    "401": "Missing, malformed, unknown, revoked or expired API key",
    "403": "The key lacks the scope, or the caller's role is too low",
    "404": "Not found (objects of other projects answer 404 too)",
    "413": "Request body too large",
    "415": "Unsupported media type (send JSON)",
    "429": "Rate limit exceeded (see Retry-After)",
}


class ProblemAutoSchema(AutoSchema):
    """Adds the problem responses every API operation can give, unless declared."""

    def _get_response_bodies(self, direction: str = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        problem = self._get_response_for_code(ProblemSerializer, "400")["content"]
        problem = {"application/problem+json": next(iter(problem.values()))}
        codes = ["400", "401", "403", "429"]
        if self.method in ("POST", "PUT", "PATCH"):
            codes += ["413", "415"]
        if "{" in self.path:
            codes.append("404")
        for code in codes:
            responses.setdefault(
                code, {"description": ERROR_DESCRIPTIONS.get(code, "Error"), "content": problem}
            )
        return responses


class APIKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.APIKeyAuthentication"
    name = "ApiKeyAuth"

    def get_security_definition(self, auto_schema: AutoSchema) -> dict[str, Any]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Api-Key <prefix>.<secret>` or `Bearer <prefix>.<secret>`",
        }

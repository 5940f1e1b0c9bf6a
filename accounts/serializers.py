from rest_framework import serializers

from accounts.models import User


class MeSerializer(serializers.ModelSerializer):
    class Meta:
        model = User
        fields = ["id", "email", "first_name", "last_name", "display_name", "avatar_url", "timezone", "locale",
                  "role", "email_verified", "created_at"]
        read_only_fields = ["id", "email", "role", "email_verified", "created_at"]

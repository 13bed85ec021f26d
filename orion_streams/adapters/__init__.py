"""Side effects live here: PostgreSQL, payments, Kafka admin, and later SMTP and sockets."""

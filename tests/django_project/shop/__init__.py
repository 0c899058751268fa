"""The test project's app: a model its job handlers write with the ORM."""

"""Event source mappings: CRUD, filter criteria and the SQS/Kinesis/DynamoDB Streams pollers."""

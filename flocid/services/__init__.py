"""The companion AWS services at :4566 (S3, SQS, Kinesis, DynamoDB + Streams, CloudWatch Logs).

    services = create_services_app(settings)      # settings with the real port (after binding)
    await root.start(services.serve)               # restores the snapshot, saves what changed (and on stop)
    Gateway(create_app(...), services_app=services)

For the Lambda side: ``await services.get_s3_object(bucket, key, version)`` and
``services.on_s3_object_changed.append(listener)`` (listener gets an ``S3ObjectChanged``).
"""

from flocid.services.app import S3ObjectError, Services, create_services_app
from flocid.services.dispatch import S3ObjectChanged

__all__ = ["S3ObjectChanged", "S3ObjectError", "Services", "create_services_app"]

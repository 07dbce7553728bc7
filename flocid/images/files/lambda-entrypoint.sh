#!/bin/sh
# flocid's /lambda-entrypoint.sh, with the contract of the one in AWS's Lambda base images:
# the first argument (the image CMD, or ImageConfig.Command) is the handler, exported as _HANDLER,
# then the runtime client /var/runtime/bootstrap takes over and talks to $AWS_LAMBDA_RUNTIME_API.
if [ $# -ge 1 ]; then
    export _HANDLER="$1"
elif [ -z "${_HANDLER:-}" ]; then
    # AWS's entrypoint exits 142 when it gets no handler.
    echo "entrypoint requires the handler name to be the first argument" 1>&2
    exit 142
fi

RUNTIME_ENTRYPOINT=/var/runtime/bootstrap
if [ -z "${AWS_LAMBDA_RUNTIME_API:-}" ]; then
    # AWS's images start their Runtime Interface Emulator here; these offline images have none.
    echo "AWS_LAMBDA_RUNTIME_API is not set: run this image through flocid, which serves the Runtime API" 1>&2
    exit 1
fi
exec "$RUNTIME_ENTRYPOINT"

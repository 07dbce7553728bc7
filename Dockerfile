# flocid in a container. Give it the host's Docker socket so it can start function containers:
#   docker build -t flocid . && docker run -p 4566:4566 -v /var/run/docker.sock:/var/run/docker.sock flocid
FROM python:3.13-slim
WORKDIR /opt/flocid
COPY pyproject.toml README.md ./
COPY flocid ./flocid
RUN pip install --no-cache-dir .
ENV FLOCI_HOST=0.0.0.0 FLOCI_DATA_DIR=/var/lib/flocid
VOLUME /var/lib/flocid
EXPOSE 4566
ENTRYPOINT ["flocid", "serve"]

# docker-register in a container, for hosts without systemd or cron:
#   docker run -d --name docker-register --restart unless-stopped \
#     -e HOST_IP=10.0.0.5 -e ETCD_HOST=10.0.0.2:2379 \
#     -v /var/run/docker.sock:/var/run/docker.sock docker-register
# The default command syncs every 10 s and right after each container event, until it is stopped.
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

# Builds behind a mirror or offline: pip reads these from the environment of RUN.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
ARG PIP_TRUSTED_HOST

COPY pyproject.toml setup.cfg README.md LICENSE docker_register.py /src/
RUN python3 -m venv /opt/docker-register \
 && /opt/docker-register/bin/pip install --no-cache-dir --disable-pip-version-check /src \
 && rm -rf /src

ENV PATH=/opt/docker-register/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
ENTRYPOINT ["docker-register"]
CMD ["sync", "--every", "10", "--events"]

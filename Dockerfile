# The one image of the compose deployment: Python 3.11, Java 17, the promo_pipeline package
# (with dagster-docker, for the run launcher) and Spark's Kafka and JDBC connector jars. The
# jars are resolved at build time by the project's own Maven resolver
# (promo_pipeline.stack.maven), so a container never downloads anything when a run starts.
# user_code, the webserver, the daemon, the Spark Connect server and every run's container run
# from it, as the unprivileged user `promo`.

FROM python:3.11-slim-bookworm AS base
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/promo
COPY pyproject.toml README.md constraints.txt ./
COPY promo_pipeline ./promo_pipeline
# Every dependency at the version the tests ran on (constraints.txt, from scripts/constraints).
RUN pip install --no-cache-dir -c constraints.txt ".[docker]"
# promo_pipeline/definitions.py loads the defs folder with dg's loader, which reads [tool.dg] from
# the pyproject.toml above the package: it goes next to the installed package, as the wheels of
# create-dagster's project template ship it.
RUN cp pyproject.toml "$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/"

FROM base AS jars
RUN apt-get update \
    && apt-get install -y --no-install-recommends maven \
    && rm -rf /var/lib/apt/lists/*
RUN PROMO_CACHE_DIR=/opt/jars python -c \
    "from promo_pipeline.stack.maven import spark_jars; print(*spark_jars(), sep='\n')"

FROM base
COPY --from=jars /opt/jars/spark-4.2.0/ /opt/spark-jars/
ENV PROMO_SPARK_JARS=/opt/spark-jars/spark-sql-kafka-0-10_2.13-4.2.0.jar,/opt/spark-jars/spark-token-provider-kafka-0-10_2.13-4.2.0.jar,/opt/spark-jars/kafka-clients-3.9.2.jar,/opt/spark-jars/commons-pool2-2.13.1.jar,/opt/spark-jars/postgresql-42.7.8.jar \
    DAGSTER_HOME=/opt/dagster/home \
    PROMO_STATE_DIR=/var/lib/promo/state \
    PYTHONUNBUFFERED=1
COPY docker/dagster.yaml /opt/dagster/home/dagster.yaml
COPY docker/workspace.yaml /opt/dagster/workspace.yaml
# Fails the build if PROMO_SPARK_JARS names a jar the resolver did not produce.
RUN python -c "from promo_pipeline.settings import load_settings; load_settings()"
# Fails the build if the code location does not load from the installed package.
RUN python -c "from promo_pipeline.definitions import defs; defs()"
# The state and config mount points belong to `promo`, so new named volumes mounted there do
# too; Dagster writes its local logs under DAGSTER_HOME.
RUN groupadd --system --gid 10001 promo \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/promo promo \
    && mkdir -p /var/lib/promo/state /etc/promo \
    && chown -R promo:promo /var/lib/promo /etc/promo /opt/dagster/home
USER 10001:10001
WORKDIR /opt/dagster
EXPOSE 4000 3000
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "promo_pipeline.definitions", "--location-name", "promo_pipeline"]

"""Resolve JVM jars from Maven Central with the system `mvn`, cached on disk.

The stack runs a Kafka broker and Spark connectors that are only published as jars, and the
machine reaches no download site other than the package registries, so Maven does the fetching.
Each resolution lands in its own cache folder with a marker file, so a second call is offline.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from pathlib import Path
from xml.sax.saxutils import escape

from promo_pipeline.stack._proc import require_tool
from promo_pipeline.stack.errors import CommandFailed

log = logging.getLogger("promo_pipeline.stack")

KAFKA_VERSION = "4.1.1"
# The broker logs through slf4j 1.7 (kafka_2.13 4.1.1 pins slf4j-api 1.7.36 and ships no
# binding). log4j-slf4j2-impl would need slf4j-api 2.x and silently falls back to a no-op logger,
# so the slf4j 1.x binding is used, at the log4j2 version Kafka 4.1 is built against.
LOG4J_VERSION = "2.24.3"
# Versions Spark's parent POM pins for the Kafka connector's runtime dependencies.
SPARK_KAFKA_CLIENTS_VERSION = "3.9.2"
SPARK_COMMONS_POOL2_VERSION = "2.13.1"
POSTGRES_JDBC_VERSION = "42.7.8"

MARKER = ".resolved"


def cache_dir() -> Path:
    """Where downloaded jars live; shared between stacks so they are fetched once per machine."""
    return Path(os.environ.get("PROMO_CACHE_DIR") or Path.home() / ".cache" / "promo_pipeline")


def _pom(coords: list[str]) -> str:
    deps = []
    for coord in coords:
        parts = coord.split(":")
        if len(parts) != 3:
            raise ValueError(f"expected group:artifact:version, got {coord!r}")
        group, artifact, version = (escape(p) for p in parts)
        deps.append(
            f"    <dependency><groupId>{group}</groupId><artifactId>{artifact}</artifactId>"
            f"<version>{version}</version></dependency>"
        )
    body = "\n".join(deps)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>promo_pipeline</groupId>
  <artifactId>jar-resolver</artifactId>
  <version>0</version>
  <packaging>pom</packaging>
  <dependencies>
{body}
  </dependencies>
</project>
"""


def _jars(dest: Path) -> list[Path]:
    return sorted(p.resolve() for p in dest.glob("*.jar"))


def resolve(coords: list[str], dest: Path, *, transitive: bool) -> list[Path]:
    """Copy the jars for `coords` (and their runtime closure if `transitive`) into `dest`.

    Idempotent: when `dest` holds a marker naming the same request, mvn is not run again.
    The copy happens in a sibling temp folder that is renamed into place, so an interrupted
    download never leaves a folder that looks complete.
    """
    marker_text = "\n".join([f"transitive={transitive}", *coords]) + "\n"
    marker = dest / MARKER
    if marker.is_file() and marker.read_text() == marker_text:
        return _jars(dest)
    mvn = require_tool("mvn", "maven")
    dest.parent.mkdir(parents=True, exist_ok=True)
    log.info("resolving %d Maven coordinate(s) into %s", len(coords), dest)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}-", dir=dest.parent) as tmp:
        work = Path(tmp)
        (work / "pom.xml").write_text(_pom(coords))
        out = work / "jars"
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(work / "pom.xml"),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={out}",
            "-DincludeScope=runtime",
        ]
        if not transitive:
            cmd.append("-DexcludeTransitive=true")
        proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
            raise CommandFailed(
                "mvn", f"mvn failed (exit {proc.returncode}) resolving {coords}:\n{tail}"
            )
        out.mkdir(exist_ok=True)
        (out / MARKER).write_text(marker_text)
        if dest.exists():
            # A stale or partial earlier result: move it aside, then drop it with the temp dir.
            dest.rename(work / "old")
        out.rename(dest)
    return _jars(dest)


def kafka_broker_jars() -> list[Path]:
    """The Kafka broker's classpath: the server artifact's closure plus a log4j2 backend."""
    coords = [
        f"org.apache.kafka:kafka_2.13:{KAFKA_VERSION}",
        f"org.apache.logging.log4j:log4j-core:{LOG4J_VERSION}",
        f"org.apache.logging.log4j:log4j-slf4j-impl:{LOG4J_VERSION}",
    ]
    return resolve(coords, cache_dir() / f"kafka-{KAFKA_VERSION}", transitive=True)


def spark_jars() -> list[Path]:
    """Jars Spark needs for Kafka sources/sinks and JDBC to Postgres, matching pyspark's version.

    Non-transitive on purpose: pyspark already ships Spark itself, and the few extra runtime
    dependencies are listed explicitly at the versions Spark's own build uses.
    """
    # Deferred: pyspark takes a second to import; `promo --help` does not need it.
    import pyspark

    spark = pyspark.__version__
    coords = [
        f"org.apache.spark:spark-sql-kafka-0-10_2.13:{spark}",
        f"org.apache.spark:spark-token-provider-kafka-0-10_2.13:{spark}",
        f"org.apache.kafka:kafka-clients:{SPARK_KAFKA_CLIENTS_VERSION}",
        f"org.apache.commons:commons-pool2:{SPARK_COMMONS_POOL2_VERSION}",
        f"org.postgresql:postgresql:{POSTGRES_JDBC_VERSION}",
    ]
    return resolve(coords, cache_dir() / f"spark-{spark}", transitive=False)

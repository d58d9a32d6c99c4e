"""The smoke job: sum of i*i for i in 1..N over P partitions, and where each task ran.

Submitted by `npm run smoke` (scripts/smoke.ts) through the Spark master.
It prints, on stdout, one line per partition and one result line:

    NIXSPARK_TASK partition=0 worker=10.77.0.11:8081 executor=0 host=cluster-worker-1 pid=1234 count=25000 sum=...
    NIXSPARK_RESULT sum=333338333350000 expected=333338333350000 partitions=4 workers=2

`worker` names the Spark worker that launched the executor: the address of
its web UI, taken from SPARK_LOG_URL_STDERR, which a standalone worker sets
for every executor it starts. On real VMs it carries the worker's address; on
a loopback test cluster, where workers may share a host name, it still tells
the workers apart. The job exits non-zero when the sum is wrong.
"""

import argparse
import os
import socket
import sys
from urllib.parse import parse_qs, urlparse

from pyspark import TaskContext
from pyspark.sql import SparkSession


def where():
    """Identify the worker and executor this task runs in."""
    log_url = os.environ.get("SPARK_LOG_URL_STDERR", "")
    worker = executor = ""
    if log_url:
        url = urlparse(log_url)
        worker = url.netloc
        executor = parse_qs(url.query).get("executorId", [""])[0]
    # Standalone executors run in <worker dir>/<app id>/<executor id>.
    if not executor:
        executor = os.path.basename(os.getcwd())
    host = socket.gethostname()
    return {"worker": worker or host, "executor": executor or "?", "host": host, "pid": os.getpid()}


def square_partition(rows):
    total = 0
    count = 0
    for i in rows:
        total += i * i
        count += 1
    info = where()
    info.update(partition=TaskContext.get().partitionId(), count=count, sum=total)
    yield info


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100000)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()
    expected = args.n * (args.n + 1) * (2 * args.n + 1) // 6

    spark = SparkSession.builder.appName("nixspark-smoke-sum-of-squares").getOrCreate()
    try:
        tasks = (
            spark.sparkContext.parallelize(range(1, args.n + 1), args.partitions)
            .mapPartitions(square_partition)
            .collect()
        )
    finally:
        spark.stop()

    for t in sorted(tasks, key=lambda t: t["partition"]):
        print(
            "NIXSPARK_TASK partition={partition} worker={worker} executor={executor} host={host} pid={pid} count={count} sum={sum}".format(**t),
            flush=True,
        )
    total = sum(t["sum"] for t in tasks)
    workers = len({t["worker"] for t in tasks})
    print(f"NIXSPARK_RESULT sum={total} expected={expected} partitions={len(tasks)} workers={workers}", flush=True)
    if total != expected:
        print(f"sum_of_squares: wrong result {total}, expected {expected}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

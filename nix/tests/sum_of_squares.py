"""The cluster's smoke job: the sum of i*i for i in 1..100000, in 4 partitions.

Prints one JSON line: the result and the host names whose executors ran the
partitions. numpy is imported inside the tasks, so a passing run also shows
that every worker has the cluster's Python environment.
"""
import json
import socket

from pyspark.sql import SparkSession


def square_sum(numbers):
    import numpy as np

    values = np.fromiter(numbers, dtype=np.int64)
    yield socket.gethostname(), int(np.sum(values * values))


spark = SparkSession.builder.appName("sum-of-squares").getOrCreate()
parts = spark.sparkContext.parallelize(range(1, 100001), 4).mapPartitions(square_sum).collect()
print(json.dumps({"result": sum(total for _, total in parts), "hosts": sorted({host for host, _ in parts})}))
spark.stop()

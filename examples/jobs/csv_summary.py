"""A PySpark job of one's own: read a CSV with a header from the data
directory, total one numeric column per value of another, print the totals
and, when given an output directory, write them there as CSV.

    nixspark submit examples/jobs/csv_summary.py -- /data/sales.csv region amount [/data/out]

Exits non-zero (and so fails `nixspark submit`) when a column is missing.
"""
import sys

from pyspark.sql import SparkSession
from pyspark.sql import functions as F


def main(argv):
    if len(argv) not in (3, 4):
        print("usage: csv_summary.py INPUT.csv GROUP_COLUMN VALUE_COLUMN [OUTPUT_DIR]", file=sys.stderr)
        return 2
    source, group, value = argv[:3]
    spark = SparkSession.builder.appName("csv-summary").getOrCreate()
    try:
        df = spark.read.option("header", True).option("inferSchema", True).csv(source)
        missing = [c for c in (group, value) if c not in df.columns]
        if missing:
            print(f"{source} has no column {', '.join(missing)}; its columns: {', '.join(df.columns)}", file=sys.stderr)
            return 1
        totals = df.groupBy(group).agg(F.sum(value).alias("total")).orderBy(group)
        for row in totals.collect():
            print(f"{row[group]}\t{row['total']}")
        if len(argv) == 4:
            totals.coalesce(1).write.mode("overwrite").option("header", True).csv(argv[3])
            print(f"wrote {argv[3]}")
        return 0
    finally:
        spark.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

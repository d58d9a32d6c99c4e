// A JVM job for `nixspark submit --deploy-mode cluster`: its driver runs on a
// worker. Counts the lines of a text file (on every node's data directory)
// that contain a word, and prints the count on the driver's stdout.
//
//   javac -cp "$SPARK_HOME/jars/*" -d build examples/jobs/LineCount.java
//   jar cf line-count.jar -C build .
//   nixspark submit --deploy-mode cluster --class LineCount line-count.jar -- /data/sales.csv north
//
// Throws (and so ends FAILED) when the file cannot be read.
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.SparkSession;

public final class LineCount {
    public static void main(String[] args) {
        if (args.length != 2) {
            throw new IllegalArgumentException("usage: LineCount FILE WORD");
        }
        SparkSession spark = SparkSession.builder().appName("line-count").getOrCreate();
        try {
            Dataset<String> lines = spark.read().textFile(args[0]);
            String word = args[1];
            long n = lines.filter((org.apache.spark.api.java.function.FilterFunction<String>) l -> l.contains(word)).count();
            System.out.println("lines containing " + word + ": " + n);
        } finally {
            spark.stop();
        }
    }
}

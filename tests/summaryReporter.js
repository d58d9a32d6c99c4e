// Prints the plain closing line "N passed, N failed, N skipped" that CI reads.
class SummaryReporter {
  onRunComplete(_contexts, results) {
    const { numPassedTests, numFailedTests, numPendingTests, numTodoTests } = results;
    const failedSuites = results.numFailedTestSuites + results.numRuntimeErrorTestSuites;
    // A suite that fails to load has no failed test of its own: count it so it cannot hide.
    const failed = numFailedTests + (numFailedTests === 0 ? failedSuites : 0);
    process.stdout.write(`\ntests: ${numPassedTests} passed, ${failed} failed, ${numPendingTests + numTodoTests} skipped\n`);
  }
}
module.exports = SummaryReporter;

// One jest project per test layer, so a layer can be run alone
// (`npx jest --selectProjects unit`) and the slow ones run in band.
const common = {
  preset: "ts-jest",
  testEnvironment: "node",
  
};
module.exports = {
  reporters: ["default", "<rootDir>/tests/summaryReporter.js"],
  projects: [
    { ...common, displayName: "unit", testMatch: ["<rootDir>/tests/unit/**/*.test.ts"] },
    { ...common, displayName: "providers", testMatch: ["<rootDir>/tests/providers/**/*.test.ts"] },
    { ...common, displayName: "integration", testMatch: ["<rootDir>/tests/integration/**/*.test.ts"] },
    { ...common, displayName: "e2e", testMatch: ["<rootDir>/tests/e2e/**/*.test.ts"] },
  ],
};

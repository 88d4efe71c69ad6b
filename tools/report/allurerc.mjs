// Allure 3 configuration for the authz-conformance HTML report (tools/render-report runs it).
//
// Two reports from one set of results: `awesome` (Allure 3's UI) and `allure2` (the classic UI). The
// failure categories come from categories.json beside this file, which a test keeps equal to the ones
// the pytest plugin writes into every results directory (conformance/failures.py): Awesome reads
// categories only from this config, the allure2 plugin reads the results' categories.json; both then
// sort failures the same way. (The `classic` plugin of 3.18.0 never matches messageRegex: not used.)
// History accumulates in AUTHZ_ALLURE_HISTORY (default reports/history.jsonl): keep that file between
// CI runs to get trends and each test's earlier results.
import { readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "..", "..");
const categories = JSON.parse(readFileSync(resolve(here, "categories.json"), "utf8")).map(
  ({ name, matchedStatuses, messageRegex }) => ({ name, matchedStatuses, messageRegex }),
);
const title = process.env.AUTHZ_REPORT_NAME || "Istio AuthorizationPolicy conformance";

export default {
  name: title,
  output: process.env.AUTHZ_REPORT_DIR || resolve(root, "reports", "html"),
  historyPath: process.env.AUTHZ_ALLURE_HISTORY || resolve(root, "reports", "history.jsonl"),
  categories,
  plugins: {
    awesome: {
      options: {
        reportName: title,
        groupBy: ["parentSuite", "suite", "subSuite"], // scenario > mode > Istio version · target
      },
    },
    allure2: { options: { reportName: `${title} (classic)` } },
  },
};

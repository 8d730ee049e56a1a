// Validate Kubernetes custom resources against the schemas generated from their operators' API types
// (@kubernetes-models: prometheus-operator's monitoring.coreos.com/v1, KEDA's keda.sh/v1alpha1).
// Input on stdin: a JSON list of documents. Output: a JSON list, per document null (valid) or the error text.
import * as monitoring from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";
import * as keda from "@kubernetes-models/keda/keda.sh/v1alpha1";

const models = { "monitoring.coreos.com/v1": monitoring, "keda.sh/v1alpha1": keda };
let input = "";
for await (const chunk of process.stdin) input += chunk;
const results = JSON.parse(input).map((doc) => {
  const group = models[doc.apiVersion];
  const Model = group && group[doc.kind];
  if (!Model) return `no schema for ${doc.apiVersion} ${doc.kind}`;
  try {
    new Model(doc).validate();
    return null;
  } catch (err) {
    return String(err.message);
  }
});
process.stdout.write(JSON.stringify(results));

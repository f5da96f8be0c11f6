//! Rendering of the CustomResourceDefinitions (for `vpn-operator crds`,
//! `deploy/crds/` and test environments).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use schemars::{JsonSchema, Schema, SchemaGenerator};

use crate::{Mask, MaskConsumer, MaskGateway, MaskProvider, MaskReservation};

/// Failure to render CRDs as YAML.
#[derive(Debug, thiserror::Error)]
#[error("rendering CRD {name} as YAML: {source}")]
pub struct RenderError {
    name: String,
    #[source]
    source: serde_saphyr::ser::Error,
}

/// Schema for free-form override objects: any object, fields preserved.
pub fn free_form_object(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// Every CRD, in a stable order: the four Mask API kinds (providers first:
/// the rest refer to them), then `MaskGateway`, built on them.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        MaskProvider::crd(),
        Mask::crd(),
        MaskConsumer::crd(),
        MaskReservation::crd(),
        MaskGateway::crd(),
    ]
}

/// File name used for a CRD under `deploy/crds/`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// One CRD as a YAML document.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, RenderError> {
    serde_saphyr::to_string(crd).map_err(|source| RenderError {
        name: crd.metadata.name.clone().unwrap_or_default(),
        source,
    })
}

/// All CRDs as one YAML stream (documents separated by `---`).
pub fn render_all() -> Result<String, RenderError> {
    let mut out = String::new();
    for crd in all() {
        out.push_str("---\n");
        out.push_str(&to_yaml(&crd)?);
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

#[allow(dead_code)]
fn _assert_schema<T: JsonSchema>() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crds_have_expected_names_columns_and_subresources() {
        let crds: Vec<_> = all().into_iter().take(4).collect();
        let names: Vec<_> = crds
            .iter()
            .map(|c| c.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "maskproviders.vpn.beebs.dev",
                "masks.vpn.beebs.dev",
                "maskconsumers.vpn.beebs.dev",
                "maskreservations.vpn.beebs.dev"
            ]
        );
        for crd in &crds {
            assert_eq!(crd.spec.scope, "Namespaced");
            let v = &crd.spec.versions[0];
            assert!(v.subresources.as_ref().unwrap().status.is_some());
            let cols: Vec<_> = v
                .additional_printer_columns
                .as_ref()
                .unwrap()
                .iter()
                .map(|c| c.name.clone())
                .collect();
            assert!(
                cols.contains(&"PHASE".to_string()) && cols.contains(&"AGE".to_string()),
                "{cols:?}"
            );
        }
        let provider_cols = crds[0].spec.versions[0]
            .additional_printer_columns
            .as_ref()
            .unwrap();
        assert!(
            provider_cols
                .iter()
                .any(|c| c.name == "USED" && c.json_path == ".status.activeSlots")
        );
    }

    #[test]
    fn gateway_crd_has_scale_status_and_columns() {
        let crd = MaskGateway::crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("maskgateways.vpn.beebs.dev")
        );
        let v = &crd.spec.versions[0];
        let sub = v.subresources.as_ref().unwrap();
        assert!(sub.status.is_some());
        let scale = sub.scale.as_ref().expect("scale subresource");
        assert_eq!(scale.spec_replicas_path, ".spec.replicas");
        assert_eq!(scale.status_replicas_path, ".status.replicas");
        assert_eq!(
            scale.label_selector_path.as_deref(),
            Some(".status.selector")
        );
        let cols: Vec<_> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(cols, ["READY", "GATEWAYS", "PUBLIC IPS", "AGE"]);
        let json = serde_json::to_value(&crd).unwrap();
        let spec = &json["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(
            spec["properties"]["replicas"]["maximum"].as_f64(),
            Some(1000.0)
        );
        assert_eq!(
            spec["properties"]["tunnel"]["properties"]["type"]["enum"],
            serde_json::json!(["native", "gluetun"])
        );
    }

    #[test]
    fn provider_schema_validates_what_v1_20_can() {
        let json = serde_json::to_value(MaskProvider::crd()).unwrap();
        let spec = &json["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let required: Vec<_> = spec["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(
            required.contains(&"secret") && required.contains(&"maxSlots"),
            "{required:?}"
        );
        assert_eq!(
            spec["properties"]["maxSlots"]["minimum"].as_f64(),
            Some(0.0)
        );
        let verify = &spec["properties"]["verify"]["properties"];
        assert!(verify["timeout"]["pattern"].as_str().is_some());
        assert!(verify["interval"]["pattern"].as_str().is_some());
        assert_eq!(
            verify["overrides"]["properties"]["pod"]["x-kubernetes-preserve-unknown-fields"],
            true
        );
        assert_eq!(
            verify["overrides"]["properties"]["containers"]["properties"]["probe"]["x-kubernetes-preserve-unknown-fields"],
            true
        );
    }

    #[test]
    fn yaml_stream_round_trips() {
        let yaml = render_all().unwrap();
        assert_eq!(yaml.matches("---\n").count(), all().len());
        for doc in yaml.split("---\n").filter(|d| !d.trim().is_empty()) {
            let back: CustomResourceDefinition = serde_saphyr::from_str(doc).unwrap();
            assert!(all().contains(&back));
        }
    }
}

/// `deploy/crds/` and the chart's `crds/` must hold exactly what the types
/// render; regenerate with `cargo run -- crds --write <dir>`.
#[cfg(test)]
mod drift {
    use std::path::Path;

    /// Asserts that `dir` (relative to the repository root) holds one file
    /// per CRD, each exactly as rendered, and nothing else.
    fn assert_generated(dir: &str) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(dir);
        let regenerate = format!("run `cargo run -- crds --write {dir}`");
        let mut expected: Vec<String> = Vec::new();
        for crd in super::all() {
            let name = super::file_name(&crd);
            expected.push(name.clone());
            let on_disk = std::fs::read_to_string(path.join(&name))
                .unwrap_or_else(|e| panic!("{dir}/{name} missing ({e}); {regenerate}"));
            assert_eq!(
                on_disk,
                super::to_yaml(&crd).unwrap(),
                "{dir}/{name} drifted from the types; {regenerate}"
            );
        }
        let mut present: Vec<String> = std::fs::read_dir(&path)
            .unwrap_or_else(|e| panic!("reading {dir}: {e}"))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml"))
            .collect();
        present.sort();
        expected.sort();
        assert_eq!(
            present, expected,
            "{dir} holds files that are not generated"
        );
    }

    #[test]
    fn deploy_crds_match_the_types() {
        assert_generated("deploy/crds");
    }

    #[test]
    fn chart_crds_match_the_types() {
        assert_generated("deploy/chart/vpn-operator/crds");
    }
}

/// The example manifests under `deploy/examples/` must parse as the types.
#[cfg(test)]
mod examples {
    use std::path::Path;

    use crate::{Mask, MaskProvider};

    fn documents(file: &str) -> Vec<serde_json::Value> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/examples")
            .join(file);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn example_provider_and_mask_parse() {
        let provider_docs = documents("provider.yaml");
        let provider: MaskProvider = serde_json::from_value(
            provider_docs
                .into_iter()
                .find(|d| d["kind"] == "MaskProvider")
                .expect("a MaskProvider"),
        )
        .unwrap();
        assert_eq!(provider.spec.max_slots, 5);
        assert_eq!(provider.spec.secret, "mullvad-credentials");
        let mask: Mask = serde_json::from_value(documents("mask.yaml").remove(0)).unwrap();
        assert!(provider.admits(
            mask.metadata.namespace.as_deref().unwrap(),
            mask.spec.providers.as_deref()
        ));
    }
}

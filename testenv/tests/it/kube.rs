//! The Kubernetes test control plane is real: a CRD is applied, an object of it
//! is created and read back, and its status subresource works.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Config};
use serde_json::json;

const GROUP: &str = "testenv.herald.dev";
const KIND: &str = "SmokeTest";
const PLURAL: &str = "smoketests";

fn crd() -> serde_json::Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": format!("{PLURAL}.{GROUP}") },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": { "plural": PLURAL, "singular": "smoketest", "kind": KIND },
            "versions": [{
                "name": "v1",
                "served": true,
                "storage": true,
                "subresources": { "status": {} },
                "schema": { "openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": { "type": "object", "properties": {
                            "url": { "type": "string" }
                        }},
                        "status": { "type": "object", "properties": {
                            "ready": { "type": "boolean" },
                            "message": { "type": "string" }
                        }}
                    }
                }}
            }]
        }
    })
}

async fn client() -> Option<Client> {
    let path = herald_testenv::kubeconfig()?;
    let kubeconfig = Kubeconfig::read_from(&path).expect("read the test kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("a client config from the test kubeconfig");
    Some(Client::try_from(config).expect("a kube client"))
}

#[tokio::test]
async fn apiserver_reports_its_pinned_version() {
    let Some(client) = client().await else {
        return;
    };
    let info = client.apiserver_version().await.expect("GET /version");
    assert!(
        info.git_version.starts_with("v1.") && info.major == "1",
        "kube-apiserver was built without its version ldflags: {info:?}"
    );
    let minor: u32 = info
        .minor
        .trim_end_matches('+')
        .parse()
        .expect("numeric minor");
    assert!(
        minor >= 33,
        "kube 5 needs kube-apiserver >= 1.33, got {info:?}"
    );
}

#[tokio::test]
async fn crd_object_and_status_subresource() {
    let Some(client) = client().await else {
        return;
    };

    // Apply the CRD (server-side apply: idempotent) and wait until it is served.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd_name = format!("{PLURAL}.{GROUP}");
    let ssa = PatchParams::apply("herald-testenv").force();
    crds.patch(&crd_name, &ssa, &Patch::Apply(crd()))
        .await
        .expect("apply the CRD");
    let established = async {
        loop {
            let crd = crds.get(&crd_name).await.expect("get the CRD");
            let ok = crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if ok {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), established)
        .await
        .expect("the CRD becomes Established within 30s");

    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, "v1", KIND), PLURAL);
    let api: Api<DynamicObject> = Api::namespaced_with(client, "default", &ar);
    let name = herald_testenv::unique_name("smoke");

    // A freshly established CRD can take a moment to be served: retry 404s briefly.
    let obj = DynamicObject::new(&name, &ar).data(json!({
        "spec": { "url": "https://example.test/hook" },
        "status": { "ready": true, "message": "ignored: status is a subresource" }
    }));
    let mut attempt = 0;
    let created = loop {
        match api.create(&PostParams::default(), &obj).await {
            Ok(o) => break o,
            Err(kube::Error::Api(e)) if e.code == 404 && attempt < 50 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("create a {KIND}: {e}"),
        }
    };
    assert!(
        created.data.get("status").is_none(),
        "status must be dropped on create when the status subresource is on: {:?}",
        created.data
    );

    let read = api.get(&name).await.expect("read the object back");
    assert_eq!(read.data["spec"]["url"], "https://example.test/hook");
    assert!(read.metadata.uid.is_some());

    let patched = api
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "ready": true, "message": "reconciled" } })),
        )
        .await
        .expect("patch the status subresource");
    assert_eq!(patched.data["status"]["ready"], true);

    let status = api.get_status(&name).await.expect("GET .../status");
    assert_eq!(status.data["status"]["message"], "reconciled");
    assert_eq!(status.data["spec"]["url"], "https://example.test/hook");

    api.delete(&name, &Default::default())
        .await
        .expect("delete the object");
}

#[test]
fn kubectl_accepts_the_kubeconfig() {
    let Some(kubeconfig) = herald_testenv::kubeconfig() else {
        return;
    };
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["get", "--raw", "/readyz"])
        .output()
        .expect("kubectl is on PATH inside scripts/testenv.sh");
    assert!(
        out.status.success(),
        "kubectl get --raw /readyz: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

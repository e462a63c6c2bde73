//! The Kubernetes manifests in deploy/kubernetes/: parsed as YAML and checked against each
//! other, against the config they ship (which must load) and against the Dockerfile.
//!
//! YAML is parsed with serde_yaml_ng (a maintained fork of serde_yaml).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::Value;
use serde_yaml_ng as serde_yaml;

fn manifest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

/// Every YAML document of every `*.yaml` / `*.yml` file in deploy/kubernetes/, with its file.
fn documents() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifest_dir())
        .expect("deploy/kubernetes/ exists")
        .flatten()
        .map(|e| e.path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in deploy/kubernetes/");
    let mut docs = Vec::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value =
                Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}: not valid YAML: {e}"));
            if !value.is_null() {
                docs.push((name.clone(), value));
            }
        }
    }
    docs
}

/// The parsed manifests, one per kind (each kind must appear exactly once).
struct Manifests {
    by_kind: BTreeMap<String, (String, Value)>,
}

impl Manifests {
    fn load() -> Self {
        let mut by_kind = BTreeMap::new();
        for (file, doc) in documents() {
            let kind = doc["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{file}: a document without `kind`"))
                .to_string();
            if let Some((other, _)) = by_kind.insert(kind.clone(), (file.clone(), doc)) {
                panic!("two {kind} documents ({other}, {file}): the test expects one");
            }
        }
        Manifests { by_kind }
    }

    fn get(&self, kind: &str) -> &Value {
        &self
            .by_kind
            .get(kind)
            .unwrap_or_else(|| panic!("no {kind} in deploy/kubernetes/"))
            .1
    }

    fn deployment(&self) -> &Value {
        self.get("Deployment")
    }

    fn pod_spec(&self) -> &Value {
        &self.deployment()["spec"]["template"]["spec"]
    }

    fn container(&self) -> &Value {
        let containers = self.pod_spec()["containers"]
            .as_sequence()
            .expect("containers");
        containers
            .iter()
            .find(|c| c["name"].as_str() == Some("switchyard"))
            .expect("a container named switchyard")
    }

    fn template_labels(&self) -> BTreeMap<String, String> {
        string_map(&self.deployment()["spec"]["template"]["metadata"]["labels"])
    }

    /// The `--config` argument of the container.
    fn config_arg(&self) -> String {
        let args = strings(&self.container()["args"]);
        let i = args
            .iter()
            .position(|a| a == "--config")
            .expect("the container passes --config");
        args.get(i + 1).expect("a path after --config").clone()
    }

    /// The ConfigMap's `switchyard.toml` (whatever key --config points at).
    fn config_text(&self) -> (String, String) {
        let arg = self.config_arg();
        let key = Path::new(&arg)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let text = self.get("ConfigMap")["data"][key.as_str()]
            .as_str()
            .unwrap_or_else(|| panic!("the ConfigMap has no data key {key:?} (--config {arg})"))
            .to_string();
        (arg, text)
    }

    /// Named container ports: name -> number.
    fn container_ports(&self) -> BTreeMap<String, u64> {
        self.container()["ports"]
            .as_sequence()
            .expect("container ports")
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().expect("every port is named").to_string(),
                    p["containerPort"].as_u64().expect("containerPort"),
                )
            })
            .collect()
    }

    /// A probe's or Service's port (a name or a number) as a number.
    fn resolve_port(&self, port: &Value) -> u64 {
        match port {
            Value::Number(n) => n.as_u64().expect("a port number"),
            Value::String(name) => *self
                .container_ports()
                .get(name)
                .unwrap_or_else(|| panic!("no container port named {name:?}")),
            other => panic!("not a port: {other:?}"),
        }
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .map(|x| x.as_str().expect("a string").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let value = match v {
                        Value::String(s) => s.clone(),
                        other => panic!("label/annotation {k:?}: not a string: {other:?}"),
                    };
                    (k.as_str().expect("a string key").to_string(), value)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn is_subset(small: &BTreeMap<String, String>, big: &BTreeMap<String, String>) -> bool {
    small.iter().all(|(k, v)| big.get(k) == Some(v))
}

/// `admin.token_env` of the shipped config.
fn token_env(config_text: &str) -> String {
    let raw: toml::Value = toml::from_str(config_text).expect("switchyard.toml is TOML");
    raw["admin"]["token_env"]
        .as_str()
        .expect("admin.token_env is set (a non-loopback admin needs a token)")
        .to_string()
}

fn load_config(m: &Manifests) -> switchyard::config::Config {
    let (path, text) = m.config_text();
    let var = token_env(&text);
    let env = move |name: &str| (name == var).then(|| "test-token".to_string());
    switchyard::config::parse_with_env(&text, Path::new(&path), &env)
        .unwrap_or_else(|e| panic!("the ConfigMap's switchyard.toml does not load:\n{e}"))
}

#[test]
fn kustomization_lists_every_manifest() {
    let dir = manifest_dir();
    let k: Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap())
            .unwrap();
    let mut listed = strings(&k["resources"]);
    listed.sort();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| (n.ends_with(".yaml") || n.ends_with(".yml")) && n != "kustomization.yaml")
        .collect();
    files.sort();
    assert_eq!(listed, files, "kustomization.yaml resources vs the files");
}

#[test]
fn every_object_carries_the_app_label() {
    let m = Manifests::load();
    for (kind, (file, doc)) in &m.by_kind {
        if kind == "Kustomization" {
            continue;
        }
        let labels = string_map(&doc["metadata"]["labels"]);
        assert_eq!(
            labels.get("app.kubernetes.io/name").map(String::as_str),
            Some("switchyard"),
            "{file}: {kind} lacks app.kubernetes.io/name: switchyard"
        );
    }
    let selector = string_map(&m.deployment()["spec"]["selector"]["matchLabels"]);
    assert_eq!(
        selector.get("app.kubernetes.io/name").map(String::as_str),
        Some("switchyard")
    );
    assert!(
        is_subset(&selector, &m.template_labels()),
        "the Deployment's selector must match its pod template labels"
    );
}

#[test]
fn deployment_has_three_replicas_and_a_surge_only_rollout() {
    let m = Manifests::load();
    let spec = &m.deployment()["spec"];
    assert_eq!(spec["replicas"].as_u64(), Some(3));
    assert_eq!(spec["strategy"]["type"].as_str(), Some("RollingUpdate"));
    let ru = &spec["strategy"]["rollingUpdate"];
    assert_eq!(ru["maxUnavailable"].as_u64(), Some(0));
    assert_eq!(ru["maxSurge"].as_u64(), Some(1));
}

#[test]
fn config_map_is_mounted_as_a_directory_where_config_points() {
    let m = Manifests::load();
    let cm_name = m.get("ConfigMap")["metadata"]["name"]
        .as_str()
        .expect("ConfigMap name");
    let args = strings(&m.container()["args"]);
    assert_eq!(
        args.first().map(String::as_str),
        Some("run"),
        "args replace the image's CMD; the ENTRYPOINT is the binary"
    );
    let config_arg = m.config_arg();

    let volume = m.pod_spec()["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| v["configMap"]["name"].as_str() == Some(cm_name))
        .expect("a volume of the ConfigMap");
    let volume_name = volume["name"].as_str().unwrap();
    let key = Path::new(&config_arg)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    if let Some(items) = volume["configMap"]["items"].as_sequence() {
        assert!(
            items
                .iter()
                .any(|i| i["key"].as_str() == Some(key) && i["path"].as_str() == Some(key)),
            "the volume's items leave out {key}"
        );
    }

    let mounts: Vec<&Value> = m.container()["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
        .iter()
        .filter(|vm| vm["name"].as_str() == Some(volume_name))
        .collect();
    assert_eq!(mounts.len(), 1, "the config volume is mounted once");
    let mount = mounts[0];
    assert!(
        mount["subPath"].is_null() && mount["subPathExpr"].is_null(),
        "no subPath: a subPath mount never sees ConfigMap updates, so hot reload would not either"
    );
    assert_eq!(mount["readOnly"].as_bool(), Some(true));
    let dir = mount["mountPath"].as_str().expect("mountPath");
    assert_eq!(
        Path::new(&config_arg),
        Path::new(dir).join(key),
        "--config must name the file inside the mounted directory"
    );
}

#[test]
fn dockerfile_cmd_uses_the_same_config_path() {
    let m = Manifests::load();
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile")).unwrap();
    let cmd = dockerfile
        .lines()
        .find(|l| l.starts_with("CMD "))
        .expect("a CMD line");
    assert!(
        cmd.contains(&format!("\"{}\"", m.config_arg())),
        "the Dockerfile's CMD ({cmd}) and the Deployment disagree on the config path"
    );
    assert!(dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/switchyard\"]"));
    // The image checks itself with the binary (distroless has no curl), on the same file.
    let health = dockerfile
        .lines()
        .skip_while(|l| !l.starts_with("HEALTHCHECK "))
        .nth(1)
        .expect("a HEALTHCHECK with its CMD on the next line");
    assert!(health.contains("\"ready\""), "{health}");
    assert!(
        health.contains(&format!("\"{}\"", m.config_arg())),
        "{health}"
    );
}

#[test]
fn probes_hit_the_admin_port() {
    let m = Manifests::load();
    let config = load_config(&m);
    let admin_port = u64::from(config.admin.listen.port());
    let ports = m.container_ports();
    assert_eq!(
        ports.get("admin"),
        Some(&admin_port),
        "container port admin"
    );
    assert_eq!(
        ports.get("http"),
        Some(&u64::from(config.server.listen.port())),
        "container port http"
    );
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &m.container()[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe} path");
        assert_eq!(m.resolve_port(&get["port"]), admin_port, "{probe} port");
    }
}

#[test]
fn admin_token_comes_from_the_secret_named_by_token_env() {
    let m = Manifests::load();
    let (_, text) = m.config_text();
    let var = token_env(&text);
    let secret = m.get("Secret");
    let secret_name = secret["metadata"]["name"].as_str().expect("Secret name");
    let has_key =
        !secret["stringData"][var.as_str()].is_null() || !secret["data"][var.as_str()].is_null();
    assert!(has_key, "the Secret has no key {var:?} (admin.token_env)");

    let container = m.container();
    let from_env = container["env"].as_sequence().is_some_and(|env| {
        env.iter().any(|e| {
            let r = &e["valueFrom"]["secretKeyRef"];
            e["name"].as_str() == Some(var.as_str())
                && r["name"].as_str() == Some(secret_name)
                && r["key"].as_str() == Some(var.as_str())
        })
    });
    let from_env_from = container["envFrom"].as_sequence().is_some_and(|all| {
        all.iter()
            .any(|e| e["secretRef"]["name"].as_str() == Some(secret_name) && e["prefix"].is_null())
    });
    assert!(
        from_env || from_env_from,
        "the container does not get {var} from Secret {secret_name}"
    );
}

#[test]
fn shipped_config_loads_and_suits_a_read_only_mount() {
    let m = Manifests::load();
    let config = load_config(&m);
    assert!(
        !config.admin.persist,
        "a ConfigMap mount is read-only: admin.persist must be false"
    );
    assert!(
        !config.admin.listen.ip().is_loopback(),
        "probes and Prometheus reach the admin listener from outside the pod"
    );
    assert!(config.admin.token.is_some());
    let (_, text) = m.config_text();
    let missing =
        switchyard::config::parse_with_env(&text, Path::new("switchyard.toml"), &|_| None);
    assert!(
        missing.is_err(),
        "without the token variable the config must not load"
    );
}

#[test]
fn termination_grace_covers_pre_stop_and_shutdown_grace() {
    let m = Manifests::load();
    let config = load_config(&m);
    let grace = m.pod_spec()["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    let pre_stop = &m.container()["lifecycle"]["preStop"];
    let sleep = pre_stop["sleep"]["seconds"]
        .as_u64()
        .expect("a preStop sleep, so endpoints are removed before SIGTERM");
    assert!(sleep > 0);
    let needed = sleep + config.server.shutdown_grace.as_secs();
    assert!(
        grace > needed,
        "terminationGracePeriodSeconds {grace} must exceed preStop {sleep}s + shutdown_grace"
    );
}

#[test]
fn runs_unprivileged_on_a_read_only_root() {
    let m = Manifests::load();
    let pod = &m.pod_spec()["securityContext"];
    let c = &m.container()["securityContext"];
    assert!(
        pod["runAsNonRoot"].as_bool() == Some(true) || c["runAsNonRoot"].as_bool() == Some(true)
    );
    assert_eq!(c["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(c["allowPrivilegeEscalation"].as_bool(), Some(false));
    let res = &m.container()["resources"];
    for kind in ["requests", "limits"] {
        for r in ["cpu", "memory"] {
            assert!(!res[kind][r].is_null(), "resources.{kind}.{r}");
        }
    }
}

#[test]
fn pdb_keeps_two_of_the_deployments_pods() {
    let m = Manifests::load();
    let pdb = m.get("PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"].as_u64(), Some(2));
    let selector = string_map(&pdb["spec"]["selector"]["matchLabels"]);
    assert!(!selector.is_empty(), "the PDB selects by labels");
    assert!(
        is_subset(&selector, &m.template_labels()),
        "the PDB must select the Deployment's pods"
    );
    assert_eq!(
        selector,
        string_map(&m.deployment()["spec"]["selector"]["matchLabels"])
    );
}

#[test]
fn service_sends_port_80_to_http_and_never_exposes_admin() {
    let m = Manifests::load();
    let config = load_config(&m);
    let svc = m.get("Service");
    let selector = string_map(&svc["spec"]["selector"]);
    assert!(!selector.is_empty() && is_subset(&selector, &m.template_labels()));
    let ports = svc["spec"]["ports"].as_sequence().expect("Service ports");
    let http = ports
        .iter()
        .find(|p| p["port"].as_u64() == Some(80))
        .expect("a Service port 80");
    assert_eq!(
        m.resolve_port(&http["targetPort"]),
        u64::from(config.server.listen.port()),
        "port 80 must reach server.listen"
    );
    let admin = u64::from(config.admin.listen.port());
    for p in ports {
        assert_ne!(
            m.resolve_port(&p["targetPort"]),
            admin,
            "the admin port must not be behind the traffic Service"
        );
    }
}

#[test]
fn pods_are_annotated_for_prometheus() {
    let m = Manifests::load();
    let config = load_config(&m);
    let a = string_map(&m.deployment()["spec"]["template"]["metadata"]["annotations"]);
    assert_eq!(
        a.get("prometheus.io/scrape").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        a.get("prometheus.io/port"),
        Some(&config.admin.listen.port().to_string())
    );
    assert_eq!(
        a.get("prometheus.io/path").map(String::as_str),
        Some("/metrics")
    );
}

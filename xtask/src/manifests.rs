//! Offline schema check of every manifest: what `kubectl kustomize manifests/`
//! renders, and the lab and e2e inputs beside it, validated against the
//! Kubernetes 1.32 OpenAPI schemas by `kubernetes-validate` (PyPI), which
//! bundles them, so the check needs no cluster and no network once installed.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context};

use crate::workspace;

/// Pinned, with schemas of the Kubernetes minor the machine's kubectl speaks.
const VALIDATOR: &str = "kubernetes-validate==1.32.0";
const VALIDATOR_VERSION: &str = "1.32.0";
const KUBERNETES_VERSION: &str = "1.32.0";

/// Manifests outside the kustomization, checked as they are.
const LOOSE: &[&str] = &["manifests/lab", "manifests/e2e"];

/// A virtualenv of the project's own, so nothing goes into the system Python.
fn venv() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(".cache/ebpf-proxy/venv")
}

fn validator() -> PathBuf {
    venv().join("bin/kubernetes-validate")
}

/// Read from pip's metadata rather than by starting Python, so that a
/// `setup` with everything present stays well under a second.
fn installed_version() -> Option<String> {
    if !validator().exists() {
        return None;
    }
    let lib = std::fs::read_dir(venv().join("lib")).ok()?.flatten().next()?.path();
    std::fs::read_dir(lib.join("site-packages"))
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .find_map(|n| Some(n.strip_prefix("kubernetes_validate-")?.strip_suffix(".dist-info")?.to_string()))
}

/// For `setup`: installs the validator into the venv when it is missing or
/// another version. Returns what it installed, or `None` when present.
pub fn ensure_validator() -> anyhow::Result<Option<String>> {
    if installed_version().as_deref() == Some(VALIDATOR_VERSION) {
        return Ok(None);
    }
    let venv = venv();
    println!("setup: installing {VALIDATOR} into {} (offline Kubernetes schema checks)", venv.display());
    if !venv.join("bin/pip").exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv)).context("python3 -m venv (python3 with venv is required)")?;
    }
    run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", "--disable-pip-version-check", VALIDATOR]))?;
    ensure!(installed_version().as_deref() == Some(VALIDATOR_VERSION), "kubernetes-validate still missing after install");
    Ok(Some(format!("kubernetes-validate {VALIDATOR_VERSION}")))
}

pub fn present_label() -> String {
    format!("kubernetes-validate {VALIDATOR_VERSION}")
}

/// Renders, flattens and validates; fails on any error or warning (an
/// unknown kind is a warning to the validator, and a mistake to us).
pub fn check() -> anyhow::Result<()> {
    let root = workspace::root();
    let mut sources = vec![("kustomize manifests/".to_string(), render(&root)?)];
    for dir in LOOSE {
        for file in yaml_files(&root.join(dir))? {
            let rel = file.strip_prefix(&root).unwrap_or(&file).display().to_string();
            sources.push((rel, std::fs::read_to_string(&file)?));
        }
    }
    let out_dir = root.join("target/manifest-check");
    std::fs::create_dir_all(&out_dir)?;
    let mut files = Vec::new();
    let mut objects = 0;
    for (i, (name, text)) in sources.iter().enumerate() {
        let docs = flatten(text).with_context(|| format!("parsing {name}"))?;
        ensure!(!docs.is_empty(), "{name}: no objects");
        objects += docs.len();
        let path = out_dir.join(format!("{i}-{}.yaml", name.replace(['/', ' '], "_")));
        // As JSON documents: JSON is YAML that every YAML version reads
        // alike, where re-emitted YAML would not (serde_yaml writes the
        // string "yes" bare, which the validator's YAML 1.1 reads as true).
        let mut text = String::new();
        for doc in &docs {
            text.push_str("---\n");
            text.push_str(&serde_json::to_string(doc)?);
            text.push('\n');
        }
        std::fs::write(&path, text)?;
        files.push(path);
    }
    validate(&files)?;
    println!(
        "manifests: {objects} objects from {} sources valid against the Kubernetes {KUBERNETES_VERSION} schemas (kubernetes-validate {VALIDATOR_VERSION}, strict)",
        sources.len()
    );
    Ok(())
}

/// Validates `files`; fails with the validator's own words.
pub fn validate(files: &[PathBuf]) -> anyhow::Result<()> {
    let validator = validator();
    ensure!(validator.exists(), "{} missing: run `cargo xtask setup`", validator.display());
    let out = Command::new(&validator)
        .args(["--strict", "--quiet", "--kubernetes-version", KUBERNETES_VERSION])
        .args(files)
        .output()
        .context("running kubernetes-validate")?;
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let complaints: Vec<&str> = report.lines().filter(|l| l.starts_with("ERROR") || l.starts_with("WARN")).collect();
    if !out.status.success() || !complaints.is_empty() {
        bail!("manifest schema check failed:\n{}", report.trim());
    }
    Ok(())
}

fn render(root: &Path) -> anyhow::Result<String> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(root.join("manifests"))
        .output()
        .context("running kubectl kustomize (kubectl is required)")?;
    ensure!(out.status.success(), "kubectl kustomize manifests/ failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?)
}

fn yaml_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Every object of a multi-document text, with `kind: List` opened up: the
/// validator has no schema for List and would pass its items unchecked.
fn flatten(text: &str) -> anyhow::Result<Vec<serde_yaml::Value>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = <serde_yaml::Value as serde::Deserialize>::deserialize(doc)?;
        if value.is_null() {
            continue;
        }
        match value.get("kind").and_then(|k| k.as_str()) {
            Some("List") => {
                let items = value.get("items").and_then(|i| i.as_sequence()).cloned().unwrap_or_default();
                out.extend(items);
            }
            _ => out.push(value),
        }
    }
    Ok(out)
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    ensure!(status.success(), "{cmd:?} failed with {status}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_opened_and_empty_documents_dropped() {
        let text = "---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n- {apiVersion: v1, kind: Namespace, metadata: {name: b}}\n---\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: c}\n";
        let docs = flatten(text).unwrap();
        let names: Vec<&str> = docs.iter().map(|d| d["metadata"]["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["a", "b", "c"]);
    }
}

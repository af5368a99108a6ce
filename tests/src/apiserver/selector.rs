//! Label selectors (`key`, `!key`, `key=value`, `key==value`, `key!=value`,
//! `key in (a,b)`, `key notin (a,b)`, comma-separated, all must hold) and
//! field selectors (`metadata.name` and `metadata.namespace` with `=`, `==`
//! or `!=`).

use serde_json::Value;

use super::ApiError;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    Exists,
    NotExists,
    In(Vec<String>),
    NotIn(Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
}

impl Requirement {
    /// `value` is the label's value, `None` if the label is absent. As in
    /// Kubernetes, an absent label satisfies `!=` and `notin`.
    fn matches(&self, value: Option<&str>) -> bool {
        match (&self.op, value) {
            (Op::Exists, v) => v.is_some(),
            (Op::NotExists, v) => v.is_none(),
            (Op::In(set), Some(v)) => set.iter().any(|s| s == v),
            (Op::In(_), None) => false,
            (Op::NotIn(set), Some(v)) => !set.iter().any(|s| s == v),
            (Op::NotIn(_), None) => true,
        }
    }
}

/// Which objects a list or watch wants: labels and fields together.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    labels: Vec<Requirement>,
    fields: Vec<Requirement>,
}

impl Filter {
    pub fn parse(label_selector: Option<&str>, field_selector: Option<&str>) -> Result<Filter, ApiError> {
        let labels = match label_selector {
            Some(s) => {
                parse_labels(s).map_err(|m| ApiError::bad_request(format!("unable to parse requirement: {m}")))?
            }
            None => Vec::new(),
        };
        let fields = match field_selector {
            Some(s) => parse_fields(s)?,
            None => Vec::new(),
        };
        Ok(Filter { labels, fields })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let label_ok = self.labels.iter().all(|r| {
            let v = labels.and_then(|l| l.get(&r.key)).and_then(Value::as_str);
            r.matches(v)
        });
        label_ok
            && self.fields.iter().all(|r| {
                let path = format!("/{}", r.key.replace('.', "/"));
                // Fields always have a value; a missing one reads as "".
                r.matches(Some(obj.pointer(&path).and_then(Value::as_str).unwrap_or("")))
            })
    }
}

fn parse_fields(s: &str) -> Result<Vec<Requirement>, ApiError> {
    let mut out = Vec::new();
    for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (key, op) = if let Some((k, v)) = term.split_once("!=") {
            (k, Op::NotIn(vec![v.to_string()]))
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            (k, Op::In(vec![v.to_string()]))
        } else {
            return Err(ApiError::bad_request(format!("invalid field selector term {term:?}")));
        };
        let key = key.trim();
        if !matches!(key, "metadata.name" | "metadata.namespace") {
            return Err(ApiError::bad_request(format!("field label not supported: {key}")));
        }
        out.push(Requirement { key: key.to_string(), op });
    }
    Ok(out)
}

/// Splits on commas outside parentheses.
fn terms(s: &str) -> Result<Vec<&str>, String> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(format!("unbalanced parentheses in {s:?}"));
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced parentheses in {s:?}"));
    }
    out.push(&s[start..]);
    Ok(out.into_iter().map(str::trim).filter(|t| !t.is_empty()).collect())
}

fn parse_labels(s: &str) -> Result<Vec<Requirement>, String> {
    let mut out = Vec::new();
    for term in terms(s)? {
        let req = if let Some(key) = term.strip_prefix('!') {
            Requirement { key: key.trim().to_string(), op: Op::NotExists }
        } else if let Some((k, v)) = term.split_once("!=") {
            Requirement { key: k.trim().to_string(), op: Op::NotIn(vec![v.trim().to_string()]) }
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            Requirement { key: k.trim().to_string(), op: Op::In(vec![v.trim().to_string()]) }
        } else if let Some(open) = term.find('(') {
            let inner = term[open + 1..].strip_suffix(')').ok_or_else(|| format!("{term:?}: expected ')'"))?;
            let set: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
            let mut words = term[..open].split_whitespace();
            let (key, op) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            if words.next().is_some() {
                return Err(format!("{term:?}: unexpected words"));
            }
            let op = match op {
                "in" => Op::In(set),
                "notin" => Op::NotIn(set),
                other => return Err(format!("{term:?}: unknown operator {other:?}")),
            };
            Requirement { key: key.to_string(), op }
        } else {
            Requirement { key: term.to_string(), op: Op::Exists }
        };
        if req.key.is_empty() || req.key.contains(char::is_whitespace) {
            return Err(format!("{term:?}: invalid label key"));
        }
        out.push(req);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "default", "labels": labels}})
    }

    fn m(sel: &str, o: &Value) -> bool {
        Filter::parse(Some(sel), None).unwrap().matches(o)
    }

    #[test]
    fn kube_proxy_selectors() {
        let sel = "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name";
        assert!(m(sel, &obj(json!({"app": "x"}))));
        assert!(m(sel, &json!({"metadata": {"name": "a"}})));
        assert!(!m(sel, &obj(json!({"service.kubernetes.io/headless": ""}))));
        let sel = "kubernetes.io/service-name,!service.kubernetes.io/headless";
        assert!(m(sel, &obj(json!({"kubernetes.io/service-name": "web"}))));
        assert!(!m(sel, &obj(json!({}))));
    }

    #[test]
    fn equality_and_sets() {
        let o = obj(json!({"a": "1", "b": "2"}));
        assert!(m("a=1", &o) && m("a==1,b=2", &o) && !m("a=2", &o));
        assert!(m("a!=2", &o) && !m("a!=1", &o) && m("c!=1", &o));
        assert!(m("a in (1, 3)", &o) && !m("a notin (1,3)", &o) && m("c notin (1)", &o) && !m("c in (1)", &o));
        assert!(m("a in (1,3),b", &o) && !m("a in (1,3),!b", &o));
        assert!(Filter::parse(Some("a in (1"), None).is_err());
    }

    #[test]
    fn fields() {
        let o = obj(json!({}));
        let f = |s: &str| Filter::parse(None, Some(s)).unwrap().matches(&o);
        assert!(f("metadata.name=a") && f("metadata.name==a") && !f("metadata.name!=a"));
        assert!(f("metadata.name=a,metadata.namespace=default") && !f("metadata.namespace=kube-system"));
        assert!(Filter::parse(None, Some("spec.clusterIP=1.2.3.4")).is_err());
    }
}

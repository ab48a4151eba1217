//! Prometheus text metrics: a small registry of gauges and counters keyed
//! by name and labels, rendered for `/metrics`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

#[derive(Default)]
pub struct Metrics {
    values: Mutex<BTreeMap<(String, String), f64>>,
}

fn labels(l: &[(&str, &str)]) -> String {
    if l.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = l
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", parts.join(","))
}

/// `labels`' rendering read back: `{k="v",...}` to its pairs.
fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s.trim_start_matches('{').trim_end_matches('}');
    while let Some((k, after)) = rest.split_once("=\"") {
        let mut v = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => v.push('\n'),
                    Some((_, c)) => v.push(c),
                    None => {}
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                c => v.push(c),
            }
        }
        out.push((k.to_string(), v));
        rest = after[end..].trim_start_matches(',');
    }
    out
}

impl Metrics {
    /// Every series of `name`, by its labels.
    pub fn series(&self, name: &str) -> Vec<Vec<(String, String)>> {
        let Ok(m) = self.values.lock() else {
            return Vec::new();
        };
        m.keys()
            .filter(|(n, _)| n == name)
            .map(|(_, l)| parse_labels(l))
            .collect()
    }

    /// `name`'s series replaced by `rows` (labels and value), at once: a
    /// scrape sees the old set or the new one.
    pub fn replace(&self, name: &str, rows: &[(Vec<(&str, &str)>, f64)]) {
        if let Ok(mut m) = self.values.lock() {
            m.retain(|(n, _), _| n != name);
            for (l, v) in rows {
                m.insert((name.to_string(), labels(l)), *v);
            }
        }
    }

    pub fn set(&self, name: &str, l: &[(&str, &str)], v: f64) {
        if let Ok(mut m) = self.values.lock() {
            m.insert((name.to_string(), labels(l)), v);
        }
    }

    pub fn inc(&self, name: &str, l: &[(&str, &str)]) {
        if let Ok(mut m) = self.values.lock() {
            *m.entry((name.to_string(), labels(l))).or_insert(0.0) += 1.0;
        }
    }

    pub fn get(&self, name: &str, l: &[(&str, &str)]) -> Option<f64> {
        self.values
            .lock()
            .ok()
            .and_then(|m| m.get(&(name.to_string(), labels(l))).copied())
    }

    /// One reconcile: its duration, and a success or an error.
    pub fn observe_sync(&self, reconciler: &str, took: Duration, ok: bool) {
        let l = [("reconciler", reconciler)];
        self.set("node_sync_sync_duration_seconds", &l, took.as_secs_f64());
        self.inc("node_sync_syncs_total", &l);
        if ok {
            self.set("node_sync_last_success_timestamp_seconds", &l, now());
        } else {
            self.inc("node_sync_errors_total", &l);
        }
    }

    pub fn render(&self) -> String {
        let Ok(m) = self.values.lock() else {
            return String::new();
        };
        let mut out = String::new();
        let mut last = "";
        for ((name, l), v) in m.iter() {
            if name != last {
                let kind = if name.ends_with("_total") {
                    "counter"
                } else {
                    "gauge"
                };
                out.push_str(&format!("# TYPE {name} {kind}\n"));
                last = name;
            }
            out.push_str(&format!("{name}{l} {v}\n"));
        }
        out
    }
}

pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let m = Metrics::default();
        m.observe_sync("routes", Duration::from_millis(5), false);
        m.set("node_sync_routes_programmed", &[], 3.0);
        let t = m.render();
        assert!(t.contains("# TYPE node_sync_errors_total counter\nnode_sync_errors_total{reconciler=\"routes\"} 1\n"), "{t}");
        assert!(t.contains("node_sync_routes_programmed 3\n"), "{t}");
        assert!(
            t.contains("node_sync_sync_duration_seconds{reconciler=\"routes\"} 0.005"),
            "{t}"
        );
    }

    #[test]
    fn series_are_read_back_and_replaced_as_a_set() {
        let m = Metrics::default();
        let odd = "a \"quoted\" \\ value,\nnext";
        m.set("x", &[("node", "a"), ("with", odd)], 1.0);
        m.set("x", &[("node", "b"), ("with", "")], 1.0);
        m.set("y", &[], 2.0);
        assert_eq!(
            m.series("x"),
            vec![
                vec![("node".into(), "a".into()), ("with".into(), odd.into())],
                vec![("node".into(), "b".into()), ("with".into(), String::new())],
            ]
        );
        assert!(
            m.render()
                .contains("x{node=\"a\",with=\"a \\\"quoted\\\" \\\\ value,\\nnext\"} 1\n"),
            "{}",
            m.render()
        );
        m.replace("x", &[(vec![("node", "c")], 1.0)]);
        assert_eq!(m.series("x"), vec![vec![("node".into(), "c".into())]]);
        m.replace("x", &[]);
        assert!(m.series("x").is_empty());
        assert_eq!(m.get("y", &[]), Some(2.0));
        assert!(!m.render().contains("# TYPE x"), "{}", m.render());
    }
}

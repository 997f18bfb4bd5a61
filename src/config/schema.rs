//! The JSON Schema of the job file (`tenure schema`), for editors and CI linters. The document is
//! `job-file.schema.json`, except the lists of words the parser reads from a table
//! (`Concurrency::NAMES`, `CatchUp::NAMES`, `TargetKind::NAMES`, `NotifyOn::NAMES`,
//! `WebhookFormat::NAMES`, `AfterOn::NAMES`) and the variables `overrides` may never list (`REFUSED_OVERRIDES`): the
//! file holds a placeholder for each and they are written in here, so the schema cannot offer a
//! word the parser refuses.

use super::job::REFUSED_OVERRIDES;
use super::{AfterOn, CatchUp, Concurrency, NotifyOn, TargetKind, WebhookFormat};

/// The schema with its placeholders; each is a JSON string in an array, so the file stays JSON.
const TEMPLATE: &str = include_str!("job-file.schema.json");

/// The JSON Schema of the job file, as `tenure schema` prints it.
pub fn job_file_schema() -> String {
    let one_of: Vec<String> =
        TargetKind::NAMES.iter().map(|(name, _)| format!("\n        {{ \"required\": [\"{name}\"] }}")).collect();
    TEMPLATE
        .replace(r#"["{concurrency}"]"#, &json_words(Concurrency::NAMES))
        .replace(r#"["{catch_up}"]"#, &json_words(CatchUp::NAMES))
        .replace(r#"["{notify on}"]"#, &json_words(NotifyOn::NAMES))
        .replace(r#"["{after on}"]"#, &json_words(AfterOn::NAMES))
        .replace(r#"["{webhook formats}"]"#, &json_words(WebhookFormat::NAMES))
        .replace(r#"["{target kinds}"]"#, &format!("[{}\n      ]", one_of.join(",")))
        .replace(r#", "{refused overrides}"]"#, &refused_patterns())
}

/// `, { "pattern": "^LD_" }, ...]`: the rest of the list of patterns `overrides` refuses.
fn refused_patterns() -> String {
    let patterns: Vec<String> = REFUSED_OVERRIDES
        .iter()
        .map(|(refused, _)| format!(", {{ \"pattern\": \"{}\" }}", refused.pattern()))
        .collect();
    format!("{}]", patterns.concat())
}

/// `["a", "b"]`: the words of a `NAMES` table as a JSON array.
fn json_words<T>(names: &[(&str, T)]) -> String {
    let quoted: Vec<String> = names.iter().map(|(name, _)| format!("\"{name}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::job_file_schema;
    use crate::config::validate::{HTTP_KEYS, JOB_KEYS, POLICY_KEYS, RETRY_KEYS};
    use crate::config::{CatchUp, Concurrency, NotifyOn, TargetKind, WebhookFormat};

    fn schema() -> Value {
        serde_json::from_str(&job_file_schema()).expect("the schema is JSON")
    }

    fn keys(value: &Value) -> BTreeSet<String> {
        value["properties"].as_object().expect("properties").keys().cloned().collect()
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    fn words<T>(names: &[(&str, T)]) -> Vec<Value> {
        names.iter().map(|(name, _)| Value::from(*name)).collect()
    }

    /// `tenure schema` must accept exactly what the parser accepts, field for field.
    #[test]
    fn the_json_schema_names_exactly_the_fields_the_parser_accepts() {
        let schema = schema();
        let defs = &schema["$defs"];
        assert_eq!(keys(&schema), set(&["defaults", "jobs"]));
        assert_eq!(keys(&defs["policies"]), set(POLICY_KEYS));
        let job: BTreeSet<String> = keys(&defs["job"]).union(&keys(&defs["policies"])).cloned().collect();
        assert_eq!(job, set(&JOB_KEYS));
        assert_eq!(keys(&defs["job"]["properties"]["http"]), set(HTTP_KEYS));
        assert_eq!(keys(&defs["policies"]["properties"]["retries"]), set(RETRY_KEYS));
    }

    /// The words come from the parser's tables, every placeholder filled.
    #[test]
    fn the_json_schema_offers_exactly_the_words_the_parser_reads() {
        let text = job_file_schema();
        assert!(!text.contains("[\"{"), "a placeholder is left: {text}");
        let schema = schema();
        let policies = &schema["$defs"]["policies"]["properties"];
        assert_eq!(policies["concurrency"]["enum"].as_array().unwrap(), &words(Concurrency::NAMES));
        assert_eq!(policies["catch_up"]["enum"].as_array().unwrap(), &words(CatchUp::NAMES));
        let one_of: Vec<Value> = schema["$defs"]["job"]["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .map(|choice| choice["required"][0].clone())
            .collect();
        assert_eq!(one_of, words(TargetKind::NAMES));
        let target = &schema["$defs"]["notify_target"]["properties"];
        assert_eq!(target["on"]["oneOf"][0]["enum"].as_array().unwrap(), &words(NotifyOn::NAMES));
        assert_eq!(target["on"]["oneOf"][1]["items"]["enum"].as_array().unwrap(), &words(NotifyOn::NAMES));
        assert_eq!(target["webhook"]["properties"]["format"]["enum"].as_array().unwrap(), &words(WebhookFormat::NAMES));
        assert_eq!(keys(&schema["$defs"]["notify_target"]), set(crate::config::notify::TARGET_KEYS));
        let refused = &schema["$defs"]["job"]["properties"]["overrides"]["items"]["not"]["anyOf"];
        let patterns: Vec<&str> = refused.as_array().unwrap().iter().map(|p| p["pattern"].as_str().unwrap()).collect();
        assert_eq!(patterns.len(), 1 + crate::config::job::REFUSED_OVERRIDES.len());
        assert!(patterns.contains(&"^LD_") && patterns.contains(&"^PATH$"), "{patterns:?}");
    }
}

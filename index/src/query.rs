//! The Elasticsearch query DSL, translated into Tantivy queries over the
//! schema of `schema.rs`.
//!
//! Field names map through [`Fields::resolve`]: `@timestamp`, `_offset`,
//! `_partition`, `_key`, `_key.keyword`, `_topic`/`_index`, `_all`/`*`,
//! `_headers.NAME` and any other name, a path of the record's value
//! (`user`, `payload.id`), whose `.keyword` form is exact.
//!
//! Supported queries:
//! - `match_all`, `match_none`;
//! - `match` (string or `{query, operator, minimum_should_match, boost}`):
//!   analysed text fields are queried with the tokens of the `default`
//!   tokenizer (split on non-alphanumerics, lowercased, tokens over 40
//!   bytes dropped: what indexing does); a value path also matches a
//!   string that reads as a number or boolean against the number (as
//!   Elasticsearch coerces for numeric fields); exact fields (`.keyword`,
//!   `_topic`, numbers, `@timestamp`) behave as `term`;
//! - `match_phrase` (`{query, slop}`): a phrase over the token positions;
//! - `multi_match` (`fields` with `^boost`, default `_all`; `type`
//!   `best_fields` (dis_max), `most_fields` (bool should) or `phrase`);
//! - `term` and `terms`: exact values, not analysed. On a value path the
//!   exact (keyword-and-number) JSON field is used: strings verbatim and
//!   numbers in Tantivy's canonical JSON encoding (an integral number is
//!   an i64 when it fits, else a u64, else an f64), so `term {latency: 5}`
//!   finds `"latency": 5` and `5.0`. `@timestamp` takes epoch millis or a
//!   date; `_offset`/`_partition` integers;
//! - `range` (`gt`, `gte`, `lt`, `lte`, legacy `from`/`to`/`include_*`,
//!   `format` ignored, `time_zone` UTC only) on `@timestamp` (epoch millis,
//!   RFC 3339, `YYYY-MM-DD`, date math `now-1h/d`, `2024-01-01||+1M`),
//!   `_offset`, `_partition`, keyword fields and value paths (numbers,
//!   or strings compared as bytes);
//! - `exists`: value paths (any sub-path too) and the record fields;
//! - `bool` (`must`, `should`, `must_not`, `filter`,
//!   `minimum_should_match` as a count or a percentage): filters and
//!   `must_not` do not score;
//! - `query_string` (`query`, `default_field`, `fields`,
//!   `default_operator`): Lucene syntax parsed by Tantivy's grammar
//!   (words, `"phrases"~slop`, `FIELD:value`, `+`/`-`, `AND`/`OR`/`NOT`,
//!   parentheses, `^boost`, `FIELD:[a TO b]`/`{a TO b}`, `FIELD:IN [a b]`,
//!   `FIELD:*`, `*`); prefixes (`foo*`) and regexes are not supported;
//! - `ids` (`"{partition}-{offset}"`), `constant_score`, `dis_max`.
//!
//! Every query takes `boost` (and ignores `_name`). Anything else
//! (`fuzzy`, `wildcard`, `regexp`, `prefix`, `nested`, `geo_*`, scripts,
//! unknown names and parameters) is [`SearchError::Unsupported`], naming it.

use std::ops::Bound;

use serde_json::{Map, Value};
use tantivy::columnar::NumericalValue;
use tantivy::query::{
    AllQuery, BooleanQuery, BoostQuery, ConstScoreQuery, DisjunctionMaxQuery, EmptyQuery,
    ExistsQuery, Occur, PhraseQuery, Query, RangeQuery, TermQuery,
};
use tantivy::query_grammar::{self, Delimiter, UserInputAst, UserInputBound, UserInputLeaf};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::time::format_description::well_known::Rfc3339;
use tantivy::time::{Date, Duration, Month, OffsetDateTime, Time};
use tantivy::tokenizer::{TextAnalyzer, TokenStream, TokenizerManager};
use tantivy::{DateTime, Term};

use crate::error::SearchError;
use crate::schema::{FieldRef, Fields};

/// How deeply compound queries may nest (Elasticsearch's
/// `indices.query.bool.max_nested_depth` is 30).
pub const MAX_DEPTH: usize = 30;

type Q = Box<dyn Query>;
type Result<T> = std::result::Result<T, SearchError>;

/// Translates an Elasticsearch query (the value of a search's `query`) into
/// a Tantivy query over `fields`. Date math (`now`) reads the clock.
pub fn parse_query(fields: &Fields, query: &Value) -> Result<Q> {
    parse_query_at(fields, query, now_ms())
}

/// [`parse_query`] with `now` (epoch milliseconds) given, for date math.
pub fn parse_query_at(fields: &Fields, query: &Value, now_ms: i64) -> Result<Q> {
    Parser::new(fields, now_ms).query(query, 0)
}

/// Translates a `query_string` query text (the `q` URL parameter), with
/// `default_field` (`_all` when `None`) and `AND` as the default operator
/// when `and`.
pub fn parse_query_string(
    fields: &Fields,
    text: &str,
    default_field: Option<&str>,
    and: bool,
) -> Result<Q> {
    let mut p = Parser::new(fields, now_ms());
    let names = vec![(
        default_field.unwrap_or(crate::schema::ALL).to_string(),
        None,
    )];
    p.query_string_text(text, &names, and, 0)
}

/// The current time in epoch milliseconds.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The boolean operator between the tokens of a `match`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operator {
    Or,
    And,
}

/// How the text of a `match`-like query is turned into a query.
#[derive(Clone, Copy, Debug)]
enum TextMode {
    /// Any (`Or`) or every (`And`) token.
    Tokens(Operator),
    /// The tokens in order, at most `slop` positions apart.
    Phrase(u32),
}

struct Parser<'f> {
    fields: &'f Fields,
    /// The `default` tokenizer, the one of every analysed field.
    analyzer: TextAnalyzer,
    now_ms: i64,
}

impl<'f> Parser<'f> {
    fn new(fields: &'f Fields, now_ms: i64) -> Parser<'f> {
        let analyzer = TokenizerManager::default()
            .get("default")
            .unwrap_or_else(|| TextAnalyzer::from(tantivy::tokenizer::SimpleTokenizer::default()));
        Parser {
            fields,
            analyzer,
            now_ms,
        }
    }

    /// One query object: `{"TYPE": BODY}`.
    fn query(&mut self, v: &Value, depth: usize) -> Result<Q> {
        if depth > MAX_DEPTH {
            return Err(SearchError::Parse(format!(
                "query is nested more than [{MAX_DEPTH}] levels deep"
            )));
        }
        let obj = v.as_object().ok_or_else(|| {
            SearchError::Parse("query malformed, must start with start_object".into())
        })?;
        let mut entries = obj.iter();
        let Some((kind, body)) = entries.next() else {
            // `"query": {}` is a match_all, as in Elasticsearch.
            return Ok(Box::new(AllQuery));
        };
        if let Some((next, _)) = entries.next() {
            return Err(SearchError::Parse(format!(
                "[{kind}] malformed query, expected [END_OBJECT] but found [FIELD_NAME] [{next}]"
            )));
        }
        let depth = depth + 1;
        match kind.as_str() {
            "match_all" => {
                let o = object(kind, body)?;
                check_keys(kind, o, &["boost"])?;
                Ok(boosted(Box::new(AllQuery), boost(kind, o)?))
            }
            "match_none" => Ok(Box::new(EmptyQuery)),
            "match" => self.match_query(body, false),
            "match_phrase" => self.match_query(body, true),
            "multi_match" => self.multi_match(body),
            "term" => self.term(body),
            "terms" => self.terms(body),
            "range" => self.range(body),
            "exists" => self.exists(body),
            "bool" => self.bool_query(body, depth),
            "query_string" => self.query_string(body, depth),
            "ids" => self.ids(body),
            "constant_score" => {
                let o = object(kind, body)?;
                check_keys(kind, o, &["filter", "boost"])?;
                let filter = o.get("filter").ok_or_else(|| {
                    SearchError::Parse("[constant_score] requires a 'filter' element".into())
                })?;
                let inner = self.query(filter, depth)?;
                let score = boost(kind, o)?.unwrap_or(1.0);
                Ok(Box::new(ConstScoreQuery::new(inner, score)))
            }
            "dis_max" => {
                let o = object(kind, body)?;
                check_keys(kind, o, &["queries", "tie_breaker", "boost"])?;
                let queries = o.get("queries").ok_or_else(|| {
                    SearchError::Parse("[dis_max] requires 'queries' field".into())
                })?;
                let subs = self.clauses(queries, depth)?;
                let tie = number_f32(kind, "tie_breaker", o.get("tie_breaker"))?.unwrap_or(0.0);
                Ok(boosted(
                    Box::new(DisjunctionMaxQuery::with_tie_breaker(subs, tie)),
                    boost(kind, o)?,
                ))
            }
            other => Err(SearchError::Unsupported(format!(
                "query type [{other}] is not supported"
            ))),
        }
    }

    /// A clause list: one query object or an array of them.
    fn clauses(&mut self, v: &Value, depth: usize) -> Result<Vec<Q>> {
        match v {
            Value::Array(items) => items.iter().map(|q| self.query(q, depth)).collect(),
            Value::Object(_) => Ok(vec![self.query(v, depth)?]),
            _ => Err(SearchError::Parse(
                "query clauses must be an object or an array of objects".into(),
            )),
        }
    }

    // ---- match, match_phrase, multi_match ----

    fn match_query(&mut self, body: &Value, phrase: bool) -> Result<Q> {
        let kind = if phrase { "match_phrase" } else { "match" };
        let (name, params) = field_body(kind, body)?;
        let (text, op, msm, slop, b) = match params {
            Value::Object(o) => {
                let allowed: &[&str] = if phrase {
                    &["query", "slop", "boost", "analyzer", "zero_terms_query"]
                } else {
                    &[
                        "query",
                        "operator",
                        "minimum_should_match",
                        "boost",
                        "analyzer",
                        "zero_terms_query",
                        "lenient",
                        "auto_generate_synonyms_phrase_query",
                    ]
                };
                check_keys(kind, o, allowed)?;
                check_analyzer(kind, o)?;
                let text = o.get("query").ok_or_else(|| {
                    SearchError::Parse(format!("[{kind}] query requires [query] for [{name}]"))
                })?;
                let slop = match o.get("slop") {
                    None => 0,
                    Some(s) => s
                        .as_u64()
                        .and_then(|s| u32::try_from(s).ok())
                        .ok_or_else(|| SearchError::Parse(format!("[{kind}] bad [slop]")))?,
                };
                (
                    text,
                    operator(kind, o)?,
                    o.get("minimum_should_match"),
                    slop,
                    boost(kind, o)?,
                )
            }
            v => (v, Operator::Or, None, 0, None),
        };
        let mode = if phrase {
            TextMode::Phrase(slop)
        } else {
            TextMode::Tokens(op)
        };
        let q = self.text_on_field(name, text, mode, msm)?;
        Ok(boosted(q, b))
    }

    fn multi_match(&mut self, body: &Value) -> Result<Q> {
        let kind = "multi_match";
        let o = object(kind, body)?;
        check_keys(
            kind,
            o,
            &[
                "query",
                "fields",
                "type",
                "operator",
                "minimum_should_match",
                "tie_breaker",
                "slop",
                "boost",
                "analyzer",
                "lenient",
                "zero_terms_query",
                "auto_generate_synonyms_phrase_query",
            ],
        )?;
        check_analyzer(kind, o)?;
        let text = o
            .get("query")
            .ok_or_else(|| SearchError::Parse("[multi_match] requires [query]".into()))?;
        let names = field_list(kind, o.get("fields"))?;
        let op = operator(kind, o)?;
        let msm = o.get("minimum_should_match");
        let slop = o.get("slop").and_then(Value::as_u64).unwrap_or(0);
        let slop = u32::try_from(slop).unwrap_or(u32::MAX);
        let typ = o
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("best_fields");
        let mode = match typ {
            "best_fields" | "most_fields" => TextMode::Tokens(op),
            "phrase" => TextMode::Phrase(slop),
            other => {
                return Err(SearchError::Unsupported(format!(
                    "[multi_match] type [{other}] is not supported"
                )))
            }
        };
        let mut per_field = Vec::with_capacity(names.len());
        for (name, field_boost) in &names {
            let q = self.text_on_field(name, text, mode, msm)?;
            per_field.push(boosted(q, *field_boost));
        }
        let q: Q = if typ == "most_fields" {
            Box::new(BooleanQuery::union(per_field))
        } else {
            let tie = number_f32(kind, "tie_breaker", o.get("tie_breaker"))?.unwrap_or(0.0);
            Box::new(DisjunctionMaxQuery::with_tie_breaker(per_field, tie))
        };
        Ok(boosted(q, boost(kind, o)?))
    }

    /// `text` queried on the field `name` as `match` (or `match_phrase`)
    /// does: analysed on text fields, exact on the others.
    fn text_on_field(
        &mut self,
        name: &str,
        text: &Value,
        mode: TextMode,
        msm: Option<&Value>,
    ) -> Result<Q> {
        match self.fields.resolve(name) {
            FieldRef::Text(f) => {
                let s = scalar_text(name, text)?;
                let tokens = self.tokens(&s);
                let terms = tokens
                    .into_iter()
                    .map(|(pos, t)| (pos, Term::from_field_text(f, &t)))
                    .collect();
                analysed(terms, mode, msm)
            }
            FieldRef::Json {
                text: Some(t),
                exact,
                path,
            } => match text {
                Value::String(s) => {
                    let tokens = self.tokens(s);
                    let terms = tokens
                        .into_iter()
                        .map(|(pos, tok)| {
                            let mut term = self.json_term(t, &path);
                            term.append_type_and_str(&tok);
                            (pos, term)
                        })
                        .collect();
                    let analysed = analysed(terms, mode, msm)?;
                    // A number or boolean written as text also matches the value.
                    match self.json_scalar_term(exact, &path, s) {
                        Some(term) => Ok(Box::new(BooleanQuery::union(vec![
                            analysed,
                            term_query(term),
                        ]))),
                        None => Ok(analysed),
                    }
                }
                other => self.exact(name, other),
            },
            _ => self.exact(name, text),
        }
    }

    /// The tokens of `text` with their positions, as indexing makes them.
    fn tokens(&mut self, text: &str) -> Vec<(usize, String)> {
        let mut stream = self.analyzer.token_stream(text);
        let mut out = Vec::new();
        while stream.advance() {
            let t = stream.token();
            out.push((t.position, t.text.clone()));
        }
        out
    }

    // ---- term, terms, ids ----

    fn term(&mut self, body: &Value) -> Result<Q> {
        let (name, params) = field_body("term", body)?;
        match params {
            Value::Object(o) => {
                check_keys("term", o, &["value", "boost", "case_insensitive"])?;
                if o.get("case_insensitive").and_then(Value::as_bool) == Some(true) {
                    return Err(SearchError::Unsupported(
                        "[term] parameter [case_insensitive] is not supported".into(),
                    ));
                }
                let value = o.get("value").ok_or_else(|| {
                    SearchError::Parse(format!("[term] query requires a [value] for [{name}]"))
                })?;
                Ok(boosted(self.exact(name, value)?, boost("term", o)?))
            }
            v => self.exact(name, v),
        }
    }

    fn terms(&mut self, body: &Value) -> Result<Q> {
        let o = object("terms", body)?;
        let mut field = None;
        for (k, v) in o {
            match k.as_str() {
                "boost" | "_name" => {}
                _ if field.is_some() => {
                    return Err(SearchError::Parse(format!(
                        "[terms] query does not support multiple fields [{k}]"
                    )))
                }
                _ => field = Some((k.as_str(), v)),
            }
        }
        let (name, values) =
            field.ok_or_else(|| SearchError::Parse("[terms] query requires a field".into()))?;
        let values = values.as_array().ok_or_else(|| {
            SearchError::Unsupported(format!(
                "[terms] on [{name}]: only a list of values is supported (no terms lookup)"
            ))
        })?;
        let subs = values
            .iter()
            .map(|v| self.exact(name, v))
            .collect::<Result<Vec<_>>>()?;
        let score = boost("terms", o)?.unwrap_or(1.0);
        Ok(Box::new(ConstScoreQuery::new(
            Box::new(BooleanQuery::union(subs)),
            score,
        )))
    }

    fn ids(&mut self, body: &Value) -> Result<Q> {
        let o = object("ids", body)?;
        check_keys("ids", o, &["values", "boost", "type"])?;
        let values = o
            .get("values")
            .and_then(Value::as_array)
            .ok_or_else(|| SearchError::Parse("[ids] requires a [values] list".into()))?;
        let mut subs: Vec<Q> = Vec::with_capacity(values.len());
        for v in values {
            let id = v
                .as_str()
                .ok_or_else(|| SearchError::Parse("[ids] values must be strings".into()))?;
            // An id that is not `{partition}-{offset}` names no record.
            let Some((p, off)) = id.split_once('-') else {
                continue;
            };
            let (Ok(p), Ok(off)) = (p.parse::<u64>(), off.parse::<u64>()) else {
                continue;
            };
            subs.push(Box::new(BooleanQuery::intersection(vec![
                term_query(Term::from_field_u64(self.fields.partition, p)),
                term_query(Term::from_field_u64(self.fields.offset, off)),
            ])));
        }
        let score = boost("ids", o)?.unwrap_or(1.0);
        Ok(Box::new(ConstScoreQuery::new(
            Box::new(BooleanQuery::union(subs)),
            score,
        )))
    }

    /// The exact value `v` on the field `name` (`term` semantics).
    fn exact(&mut self, name: &str, v: &Value) -> Result<Q> {
        match self.fields.resolve(name) {
            FieldRef::Keyword(f) | FieldRef::Text(f) => {
                let s = scalar_text(name, v)?;
                Ok(term_query(Term::from_field_text(f, &s)))
            }
            FieldRef::Number(f) => {
                let n = number_value(name, v)?;
                match n {
                    NumericalValue::I64(i) => match u64::try_from(i) {
                        Ok(u) => Ok(term_query(Term::from_field_u64(f, u))),
                        Err(_) => Ok(Box::new(EmptyQuery)),
                    },
                    NumericalValue::U64(u) => Ok(term_query(Term::from_field_u64(f, u))),
                    // A fraction is no offset nor partition.
                    NumericalValue::F64(_) => Ok(Box::new(EmptyQuery)),
                }
            }
            FieldRef::Timestamp(f) => {
                // Indexed dates are truncated to seconds: a range over the
                // (millisecond) fast field is exact.
                let lo = self.date_ms(name, v, false)?;
                let hi = self.date_ms(name, v, true)?;
                Ok(Box::new(RangeQuery::new(
                    Bound::Included(date_term(f, lo)),
                    Bound::Included(date_term(f, hi)),
                )))
            }
            FieldRef::Json { exact, path, .. } => match v {
                Value::String(s) => {
                    let mut term = self.json_term(exact, &path);
                    term.append_type_and_str(s);
                    match self.json_scalar_term(exact, &path, s) {
                        Some(alt) => Ok(Box::new(BooleanQuery::union(vec![
                            term_query(term),
                            term_query(alt),
                        ]))),
                        None => Ok(term_query(term)),
                    }
                }
                Value::Number(n) => Ok(match self.json_number_term(exact, &path, n) {
                    Some(term) => term_query(term),
                    None => Box::new(EmptyQuery),
                }),
                Value::Bool(b) => {
                    let mut term = self.json_term(exact, &path);
                    term.append_type_and_fast_value(*b);
                    Ok(term_query(term))
                }
                _ => Err(SearchError::Parse(format!(
                    "[{name}]: the value must be a string, a number or a boolean"
                ))),
            },
        }
    }

    /// The term of a JSON path of `field` (no value yet). Header names are
    /// not split on dots (their field does not expand dots).
    fn json_term(&self, field: Field, path: &str) -> Term {
        if field == self.fields.headers || field == self.fields.headers_keyword {
            let escaped = path.replace('.', "\\.");
            Term::from_field_json_path(field, &escaped, false)
        } else {
            Term::from_field_json_path(field, path, true)
        }
    }

    /// A JSON number as Tantivy indexes it: an integral value as an i64
    /// when it fits, else a u64, else an f64 (`NumericalValue::normalize`).
    fn json_number_term(&self, field: Field, path: &str, n: &serde_json::Number) -> Option<Term> {
        let value = if let Some(i) = n.as_i64() {
            NumericalValue::I64(i)
        } else if let Some(u) = n.as_u64() {
            NumericalValue::U64(u)
        } else {
            let f = n.as_f64()?;
            if !f.is_finite() {
                return None;
            }
            NumericalValue::F64(f)
        };
        Some(self.json_numerical_term(field, path, value))
    }

    fn json_numerical_term(&self, field: Field, path: &str, value: NumericalValue) -> Term {
        let mut term = self.json_term(field, path);
        match value.normalize() {
            NumericalValue::I64(i) => term.append_type_and_fast_value(i),
            NumericalValue::U64(u) => term.append_type_and_fast_value(u),
            NumericalValue::F64(f) => term.append_type_and_fast_value(f),
        }
        term
    }

    /// The number or boolean a string reads as, as a term of the JSON path.
    fn json_scalar_term(&self, field: Field, path: &str, s: &str) -> Option<Term> {
        let s = s.trim();
        if let Ok(b) = s.parse::<bool>() {
            let mut term = self.json_term(field, path);
            term.append_type_and_fast_value(b);
            return Some(term);
        }
        let n = s.parse::<NumericalValue>().ok()?;
        if let NumericalValue::F64(f) = n {
            if !f.is_finite() {
                return None;
            }
        }
        Some(self.json_numerical_term(field, path, n))
    }

    // ---- range ----

    fn range(&mut self, body: &Value) -> Result<Q> {
        let (name, params) = field_body("range", body)?;
        let o = object("range", params)?;
        check_keys(
            "range",
            o,
            &[
                "gt",
                "gte",
                "lt",
                "lte",
                "from",
                "to",
                "include_lower",
                "include_upper",
                "format",
                "time_zone",
                "relation",
                "boost",
            ],
        )?;
        if let Some(tz) = o.get("time_zone") {
            let utc = matches!(
                tz.as_str(),
                Some("UTC" | "Z" | "+00:00" | "Etc/UTC" | "GMT" | "+0000")
            );
            if !utc {
                return Err(SearchError::Unsupported(format!(
                    "[range] time_zone [{tz}] is not supported: dates are UTC"
                )));
            }
        }
        if let Some(rel) = o.get("relation") {
            if !rel
                .as_str()
                .is_some_and(|r| r.eq_ignore_ascii_case("intersects"))
            {
                return Err(SearchError::Unsupported(format!(
                    "[range] relation [{rel}] is not supported"
                )));
            }
        }
        let flag = |k: &str| -> Result<bool> {
            match o.get(k) {
                None | Some(Value::Null) => Ok(true),
                Some(Value::Bool(b)) => Ok(*b),
                Some(_) => Err(SearchError::Parse(format!(
                    "[range] [{k}] must be a boolean"
                ))),
            }
        };
        let some = |v: Option<&Value>| v.filter(|v| !v.is_null()).cloned();
        let mut lower = Bound::Unbounded;
        if let Some(v) = some(o.get("from")) {
            lower = if flag("include_lower")? {
                Bound::Included(v)
            } else {
                Bound::Excluded(v)
            };
        }
        if let Some(v) = some(o.get("gte")) {
            lower = Bound::Included(v);
        }
        if let Some(v) = some(o.get("gt")) {
            lower = Bound::Excluded(v);
        }
        let mut upper = Bound::Unbounded;
        if let Some(v) = some(o.get("to")) {
            upper = if flag("include_upper")? {
                Bound::Included(v)
            } else {
                Bound::Excluded(v)
            };
        }
        if let Some(v) = some(o.get("lte")) {
            upper = Bound::Included(v);
        }
        if let Some(v) = some(o.get("lt")) {
            upper = Bound::Excluded(v);
        }
        let q = self.range_on(name, lower, upper)?;
        Ok(boosted(q, boost("range", o)?))
    }

    /// The values of the field `name` between `lower` and `upper`.
    fn range_on(&mut self, name: &str, lower: Bound<Value>, upper: Bound<Value>) -> Result<Q> {
        if matches!((&lower, &upper), (Bound::Unbounded, Bound::Unbounded)) {
            // No bound: every record with the field.
            return self.exists_field(name);
        }
        match self.fields.resolve(name) {
            FieldRef::Timestamp(f) => {
                // Elasticsearch rounds `gt` and `lte` up, `gte` and `lt` down.
                let lo = match &lower {
                    Bound::Included(v) => Bound::Included(self.date_ms(name, v, false)?),
                    Bound::Excluded(v) => Bound::Excluded(self.date_ms(name, v, true)?),
                    Bound::Unbounded => Bound::Unbounded,
                };
                let hi = match &upper {
                    Bound::Included(v) => Bound::Included(self.date_ms(name, v, true)?),
                    Bound::Excluded(v) => Bound::Excluded(self.date_ms(name, v, false)?),
                    Bound::Unbounded => Bound::Unbounded,
                };
                Ok(Box::new(RangeQuery::new(
                    lo.map(|ms| date_term(f, ms)),
                    hi.map(|ms| date_term(f, ms)),
                )))
            }
            FieldRef::Number(f) => {
                let lo = map_bound(&lower, |v| number_value(name, v))?;
                let hi = map_bound(&upper, |v| number_value(name, v))?;
                match u64_range(lo, hi) {
                    Some((lo, hi)) => Ok(Box::new(RangeQuery::new(
                        Bound::Included(Term::from_field_u64(f, lo)),
                        match hi {
                            Some(hi) => Bound::Included(Term::from_field_u64(f, hi)),
                            None => Bound::Unbounded,
                        },
                    ))),
                    None => Ok(Box::new(EmptyQuery)),
                }
            }
            FieldRef::Keyword(f) => {
                let lo = map_bound(&lower, |v| scalar_text(name, v))?;
                let hi = map_bound(&upper, |v| scalar_text(name, v))?;
                Ok(Box::new(RangeQuery::new(
                    lo.map(|s| Term::from_field_text(f, &s)),
                    hi.map(|s| Term::from_field_text(f, &s)),
                )))
            }
            FieldRef::Text(_) => Err(SearchError::Unsupported(format!(
                "[range] on the analysed text field [{name}] is not supported"
            ))),
            FieldRef::Json { exact, path, .. } => {
                // Numbers (or strings reading as numbers) compare as
                // numbers; other strings compare as bytes.
                let as_number = |v: &Value| -> Option<NumericalValue> {
                    match v {
                        Value::Number(n) => n
                            .as_i64()
                            .map(NumericalValue::I64)
                            .or_else(|| n.as_u64().map(NumericalValue::U64))
                            .or_else(|| n.as_f64().map(NumericalValue::F64)),
                        Value::String(s) => s.trim().parse::<NumericalValue>().ok(),
                        _ => None,
                    }
                };
                let lo = map_bound(&lower, |v| Ok(as_number(v)))?;
                let hi = map_bound(&upper, |v| Ok(as_number(v)))?;
                let numeric = bound_all(&lo, |n| n.is_some()) && bound_all(&hi, |n| n.is_some());
                if numeric {
                    let lo = lo.map(|n| n.map(NumericalValue::normalize));
                    let hi = hi.map(|n| n.map(NumericalValue::normalize));
                    // Both bounds of one type, as the fast field range wants.
                    let same = same_numeric_type(&lo, &hi);
                    let to_term = |n: Option<NumericalValue>| -> Term {
                        let n = n.unwrap_or(NumericalValue::I64(0));
                        let n = if same {
                            n
                        } else {
                            NumericalValue::F64(as_f64(n))
                        };
                        let mut term = self.json_term(exact, &path);
                        match n {
                            NumericalValue::I64(i) => term.append_type_and_fast_value(i),
                            NumericalValue::U64(u) => term.append_type_and_fast_value(u),
                            NumericalValue::F64(f) => term.append_type_and_fast_value(f),
                        }
                        term
                    };
                    Ok(Box::new(RangeQuery::new(lo.map(to_term), hi.map(to_term))))
                } else {
                    let to_term = |v: &Value| -> Result<Term> {
                        let s = scalar_text(name, v)?;
                        let mut term = self.json_term(exact, &path);
                        term.append_type_and_str(&s);
                        Ok(term)
                    };
                    Ok(Box::new(RangeQuery::new(
                        map_bound(&lower, to_term)?,
                        map_bound(&upper, to_term)?,
                    )))
                }
            }
        }
    }

    /// A date value in epoch milliseconds: a number (millis), digits, an
    /// RFC 3339 date, `YYYY-MM-DD`, or date math. `round_up` takes the
    /// last millisecond of a rounded unit (or of a date without time).
    fn date_ms(&self, name: &str, v: &Value, round_up: bool) -> Result<i64> {
        let bad = || SearchError::Parse(format!("failed to parse date field [{v}] of [{name}]"));
        match v {
            Value::Number(n) => n
                .as_i64()
                .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
                .ok_or_else(bad),
            Value::String(s) => parse_date_math(s.trim(), self.now_ms, round_up).ok_or_else(bad),
            _ => Err(bad()),
        }
    }

    // ---- exists ----

    fn exists(&mut self, body: &Value) -> Result<Q> {
        let o = object("exists", body)?;
        check_keys("exists", o, &["field", "boost"])?;
        let name = o
            .get("field")
            .and_then(Value::as_str)
            .ok_or_else(|| SearchError::Parse("[exists] must be provided with a [field]".into()))?;
        let q = self.exists_field(name)?;
        Ok(boosted(q, boost("exists", o)?))
    }

    fn exists_field(&self, name: &str) -> Result<Q> {
        let f = self.fields;
        let column = match f.resolve(name) {
            FieldRef::Json { exact, path, .. } => {
                let base = f.schema.get_field_name(exact);
                if path.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}.{path}")
                }
            }
            FieldRef::Timestamp(x) | FieldRef::Number(x) | FieldRef::Keyword(x) => {
                f.schema.get_field_name(x).to_string()
            }
            FieldRef::Text(x) if x == f.key => f.schema.get_field_name(f.key_keyword).to_string(),
            FieldRef::Text(_) => {
                return Err(SearchError::Unsupported(format!(
                    "[exists] on the field [{name}] is not supported"
                )))
            }
        };
        Ok(Box::new(ConstScoreQuery::new(
            Box::new(ExistsQuery::new(column, true)),
            1.0,
        )))
    }

    // ---- bool ----

    fn bool_query(&mut self, body: &Value, depth: usize) -> Result<Q> {
        let kind = "bool";
        let o = object(kind, body)?;
        check_keys(
            kind,
            o,
            &[
                "must",
                "should",
                "must_not",
                "filter",
                "minimum_should_match",
                "boost",
                "adjust_pure_negative",
            ],
        )?;
        let get = |p: &mut Self, k: &str| -> Result<Vec<Q>> {
            match o.get(k) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(v) => p.clauses(v, depth),
            }
        };
        let must = get(self, "must")?;
        let should = get(self, "should")?;
        let must_not = get(self, "must_not")?;
        let filter = get(self, "filter")?;
        // Elasticsearch: one should clause must match when there is no
        // must nor filter clause, none otherwise.
        let default_msm = usize::from(must.is_empty() && filter.is_empty() && !should.is_empty());
        let msm = match o.get("minimum_should_match") {
            None | Some(Value::Null) => default_msm,
            Some(v) => minimum_should_match(v, should.len())?,
        };
        if msm > should.len() {
            return Ok(Box::new(EmptyQuery));
        }
        let positive = !must.is_empty() || !filter.is_empty() || !should.is_empty();
        let mut subs: Vec<(Occur, Q)> = Vec::new();
        subs.extend(must.into_iter().map(|q| (Occur::Must, q)));
        subs.extend(should.into_iter().map(|q| (Occur::Should, q)));
        subs.extend(
            filter
                .into_iter()
                .map(|q| (Occur::Must, Box::new(ConstScoreQuery::new(q, 0.0)) as Q)),
        );
        subs.extend(must_not.into_iter().map(|q| (Occur::MustNot, q)));
        if !positive {
            // Only must_not (or nothing): every other record matches.
            subs.push((
                Occur::Must,
                Box::new(ConstScoreQuery::new(Box::new(AllQuery), 0.0)),
            ));
            if subs.len() == 1 {
                // An empty bool is a match_all, scoring 1.
                subs = vec![(Occur::Must, Box::new(AllQuery) as Q)];
            }
        }
        let q = BooleanQuery::with_minimum_required_clauses(subs, msm);
        Ok(boosted(Box::new(q), boost(kind, o)?))
    }

    // ---- query_string ----

    fn query_string(&mut self, body: &Value, depth: usize) -> Result<Q> {
        let kind = "query_string";
        let o = object(kind, body)?;
        check_keys(
            kind,
            o,
            &[
                "query",
                "default_field",
                "fields",
                "default_operator",
                "boost",
                "analyze_wildcard",
                "lenient",
                "allow_leading_wildcard",
                "auto_generate_synonyms_phrase_query",
                "escape",
                "analyzer",
                "type",
            ],
        )?;
        check_analyzer(kind, o)?;
        if let Some(t) = o.get("type").and_then(Value::as_str) {
            if t != "best_fields" {
                return Err(SearchError::Unsupported(format!(
                    "[query_string] type [{t}] is not supported"
                )));
            }
        }
        let text = o.get("query").and_then(Value::as_str).ok_or_else(|| {
            SearchError::Parse("[query_string] must be provided with a [query]".into())
        })?;
        let names = match (o.get("fields"), o.get("default_field")) {
            (Some(list), _) => field_list(kind, Some(list))?,
            (None, Some(Value::String(d))) => vec![(d.clone(), None)],
            (None, Some(_)) => {
                return Err(SearchError::Parse(
                    "[query_string] bad [default_field]".into(),
                ))
            }
            (None, None) => vec![(crate::schema::ALL.to_string(), None)],
        };
        let and = match o.get("default_operator") {
            None => false,
            Some(Value::String(s)) if s.eq_ignore_ascii_case("and") => true,
            Some(Value::String(s)) if s.eq_ignore_ascii_case("or") => false,
            Some(v) => {
                return Err(SearchError::Parse(format!(
                    "[query_string] bad [default_operator] [{v}]"
                )))
            }
        };
        let q = self.query_string_text(text, &names, and, depth)?;
        Ok(boosted(q, boost(kind, o)?))
    }

    fn query_string_text(
        &mut self,
        text: &str,
        names: &[(String, Option<f32>)],
        and: bool,
        depth: usize,
    ) -> Result<Q> {
        let ast = query_grammar::parse_query(text)
            .map_err(|_| SearchError::Parse(format!("Failed to parse query [{text}]")))?;
        self.ast(&ast, names, and, depth)
    }

    /// One node of a parsed `query_string`.
    fn ast(
        &mut self,
        ast: &UserInputAst,
        names: &[(String, Option<f32>)],
        and: bool,
        depth: usize,
    ) -> Result<Q> {
        if depth > MAX_DEPTH {
            return Err(SearchError::Parse(format!(
                "query_string is nested more than [{MAX_DEPTH}] levels deep"
            )));
        }
        match ast {
            UserInputAst::Clause(clauses) => {
                if clauses.is_empty() {
                    return Ok(Box::new(EmptyQuery));
                }
                let mut subs = Vec::with_capacity(clauses.len() + 1);
                let (mut musts, mut shoulds) = (0usize, 0usize);
                for (occur, sub) in clauses {
                    let occur = match occur {
                        Some(query_grammar::Occur::Must) => Occur::Must,
                        Some(query_grammar::Occur::MustNot) => Occur::MustNot,
                        Some(query_grammar::Occur::Should) => Occur::Should,
                        None if and => Occur::Must,
                        None => Occur::Should,
                    };
                    match occur {
                        Occur::Must => musts += 1,
                        Occur::Should => shoulds += 1,
                        Occur::MustNot => {}
                    }
                    subs.push((occur, self.ast(sub, names, and, depth + 1)?));
                }
                if musts == 0 && shoulds == 0 {
                    subs.push((
                        Occur::Must,
                        Box::new(ConstScoreQuery::new(Box::new(AllQuery), 0.0)),
                    ));
                }
                let msm = usize::from(musts == 0 && shoulds > 0);
                Ok(Box::new(BooleanQuery::with_minimum_required_clauses(
                    subs, msm,
                )))
            }
            UserInputAst::Boost(sub, b) => {
                let q = self.ast(sub, names, and, depth + 1)?;
                Ok(Box::new(BoostQuery::new(q, b.into_inner() as f32)))
            }
            UserInputAst::Leaf(leaf) => self.leaf(leaf, names, and),
        }
    }

    fn leaf(
        &mut self,
        leaf: &UserInputLeaf,
        names: &[(String, Option<f32>)],
        and: bool,
    ) -> Result<Q> {
        let targets = |field: &Option<String>| -> Vec<(String, Option<f32>)> {
            match field {
                Some(f) => vec![(f.clone(), None)],
                None => names.to_vec(),
            }
        };
        let per_field = |p: &mut Self,
                         fields: Vec<(String, Option<f32>)>,
                         build: &mut dyn FnMut(&mut Self, &str) -> Result<Q>|
         -> Result<Q> {
            let mut subs = Vec::with_capacity(fields.len());
            for (name, b) in &fields {
                subs.push(boosted(build(p, name)?, *b));
            }
            Ok(if subs.len() == 1 {
                subs.remove(0)
            } else {
                Box::new(DisjunctionMaxQuery::new(subs))
            })
        };
        match leaf {
            UserInputLeaf::All => Ok(Box::new(AllQuery)),
            UserInputLeaf::Literal(lit) => {
                if lit.prefix {
                    return Err(SearchError::Unsupported(format!(
                        "prefix queries [{}*] are not supported in query_string",
                        lit.phrase
                    )));
                }
                if lit.delimiter == Delimiter::None {
                    if lit.phrase.contains(['*', '?']) {
                        return Err(SearchError::Unsupported(format!(
                            "wildcard queries [{}] are not supported in query_string",
                            lit.phrase
                        )));
                    }
                    if lit.slop > 0 {
                        return Err(SearchError::Unsupported(format!(
                            "fuzzy queries [{}~{}] are not supported in query_string",
                            lit.phrase, lit.slop
                        )));
                    }
                }
                let mode = match lit.delimiter {
                    Delimiter::DoubleQuotes | Delimiter::SingleQuotes => TextMode::Phrase(lit.slop),
                    Delimiter::None => {
                        TextMode::Tokens(if and { Operator::And } else { Operator::Or })
                    }
                };
                let text = Value::String(lit.phrase.clone());
                per_field(self, targets(&lit.field_name), &mut |p, name| {
                    p.text_on_field(name, &text, mode, None)
                })
            }
            UserInputLeaf::Range {
                field,
                lower,
                upper,
            } => {
                let bound = |b: &UserInputBound| match b {
                    UserInputBound::Inclusive(s) if s != "*" => {
                        Bound::Included(Value::String(s.clone()))
                    }
                    UserInputBound::Exclusive(s) if s != "*" => {
                        Bound::Excluded(Value::String(s.clone()))
                    }
                    _ => Bound::Unbounded,
                };
                let (lo, hi) = (bound(lower), bound(upper));
                per_field(self, targets(field), &mut |p, name| {
                    p.range_on(name, lo.clone(), hi.clone())
                })
            }
            UserInputLeaf::Set { field, elements } => {
                per_field(self, targets(field), &mut |p, name| {
                    let subs = elements
                        .iter()
                        .map(|e| p.exact(name, &Value::String(e.clone())))
                        .collect::<Result<Vec<_>>>()?;
                    Ok(Box::new(BooleanQuery::union(subs)) as Q)
                })
            }
            UserInputLeaf::Exists { field } => self.exists_field(field),
            UserInputLeaf::Regex { .. } => Err(SearchError::Unsupported(
                "regular expressions are not supported in query_string".into(),
            )),
        }
    }
}

// ---- helpers ----

/// A query of tokens: a term, all/any of them, or a phrase.
fn analysed(terms: Vec<(usize, Term)>, mode: TextMode, msm: Option<&Value>) -> Result<Q> {
    if terms.is_empty() {
        // Elasticsearch's `zero_terms_query: none`.
        return Ok(Box::new(EmptyQuery));
    }
    if terms.len() == 1 {
        let (_, t) = terms
            .into_iter()
            .next()
            .ok_or_else(|| SearchError::Internal("no term".into()))?;
        return Ok(Box::new(TermQuery::new(t, IndexRecordOption::WithFreqs)));
    }
    match mode {
        TextMode::Phrase(slop) => {
            let first = terms.first().map(|(p, _)| *p).unwrap_or(0);
            let terms = terms
                .into_iter()
                .map(|(p, t)| (p.saturating_sub(first), t))
                .collect();
            Ok(Box::new(PhraseQuery::new_with_offset_and_slop(terms, slop)))
        }
        TextMode::Tokens(op) => {
            let n = terms.len();
            let subs: Vec<Q> = terms
                .into_iter()
                .map(|(_, t)| Box::new(TermQuery::new(t, IndexRecordOption::WithFreqs)) as Q)
                .collect();
            if op == Operator::And {
                return Ok(Box::new(BooleanQuery::intersection(subs)));
            }
            let msm = match msm {
                None | Some(Value::Null) => 1,
                Some(v) => minimum_should_match(v, n)?.max(1),
            };
            if msm > n {
                return Ok(Box::new(EmptyQuery));
            }
            Ok(Box::new(BooleanQuery::union_with_minimum_required_clauses(
                subs, msm,
            )))
        }
    }
}

fn term_query(t: Term) -> Q {
    Box::new(TermQuery::new(t, IndexRecordOption::WithFreqs))
}

fn date_term(f: Field, ms: i64) -> Term {
    Term::from_field_date(f, DateTime::from_timestamp_millis(ms))
}

fn boosted(q: Q, b: Option<f32>) -> Q {
    match b {
        Some(b) if b != 1.0 => Box::new(BoostQuery::new(q, b)),
        _ => q,
    }
}

fn object<'a>(kind: &str, v: &'a Value) -> Result<&'a Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| SearchError::Parse(format!("[{kind}] query malformed, no start_object")))
}

/// Rejects the parameters of a query other than `allowed` (and `_name`).
fn check_keys(kind: &str, o: &Map<String, Value>, allowed: &[&str]) -> Result<()> {
    for k in o.keys() {
        if k != "_name" && !allowed.contains(&k.as_str()) {
            return Err(SearchError::Unsupported(format!(
                "[{kind}] query does not support [{k}]"
            )));
        }
    }
    Ok(())
}

/// Only the `default` analyser (the one of every text field) is known.
fn check_analyzer(kind: &str, o: &Map<String, Value>) -> Result<()> {
    match o.get("analyzer").map(|a| a.as_str()) {
        None | Some(Some("default" | "standard")) => Ok(()),
        Some(a) => Err(SearchError::Unsupported(format!(
            "[{kind}] analyzer [{}] is not supported",
            a.unwrap_or("?")
        ))),
    }
}

/// `{"FIELD": params}` of a field-level query (one field only).
fn field_body<'a>(kind: &str, body: &'a Value) -> Result<(&'a str, &'a Value)> {
    let o = object(kind, body)?;
    let mut it = o.iter().filter(|(k, _)| k.as_str() != "_name");
    let (name, params) = it
        .next()
        .ok_or_else(|| SearchError::Parse(format!("[{kind}] query requires a field")))?;
    if let Some((other, _)) = it.next() {
        return Err(SearchError::Parse(format!(
            "[{kind}] query doesn't support multiple fields, found [{name}] and [{other}]"
        )));
    }
    Ok((name.as_str(), params))
}

/// `fields` of `multi_match`/`query_string`: names with an optional `^boost`.
fn field_list(kind: &str, v: Option<&Value>) -> Result<Vec<(String, Option<f32>)>> {
    let Some(v) = v else {
        return Ok(vec![(crate::schema::ALL.to_string(), None)]);
    };
    let items: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        Value::String(_) => vec![v],
        _ => {
            return Err(SearchError::Parse(format!(
                "[{kind}] [fields] must be a list"
            )))
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let s = item
            .as_str()
            .ok_or_else(|| SearchError::Parse(format!("[{kind}] [fields] must be strings")))?;
        let (name, b) = match s.rsplit_once('^') {
            Some((n, b)) => (
                n,
                Some(b.parse::<f32>().map_err(|_| {
                    SearchError::Parse(format!("[{kind}] bad boost in field [{s}]"))
                })?),
            ),
            None => (s, None),
        };
        if name.contains('*') && name != "*" {
            return Err(SearchError::Unsupported(format!(
                "[{kind}] field patterns [{name}] are not supported"
            )));
        }
        out.push((name.to_string(), b));
    }
    if out.is_empty() {
        out.push((crate::schema::ALL.to_string(), None));
    }
    Ok(out)
}

fn operator(kind: &str, o: &Map<String, Value>) -> Result<Operator> {
    match o.get("operator") {
        None => Ok(Operator::Or),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("or") => Ok(Operator::Or),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("and") => Ok(Operator::And),
        Some(v) => Err(SearchError::Parse(format!("[{kind}] bad [operator] [{v}]"))),
    }
}

fn boost(kind: &str, o: &Map<String, Value>) -> Result<Option<f32>> {
    number_f32(kind, "boost", o.get("boost"))
}

fn number_f32(kind: &str, key: &str, v: Option<&Value>) -> Result<Option<f32>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64().map(|f| f as f32)),
        Some(Value::String(s)) => s
            .parse::<f32>()
            .map(Some)
            .map_err(|_| SearchError::Parse(format!("[{kind}] bad [{key}] [{s}]"))),
        Some(v) => Err(SearchError::Parse(format!("[{kind}] bad [{key}] [{v}]"))),
    }
}

/// A scalar as text (what `term` compares with a keyword).
fn scalar_text(name: &str, v: &Value) -> Result<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(SearchError::Parse(format!(
            "[{name}]: the value must be a string, a number or a boolean, not {v}"
        ))),
    }
}

/// A number, from a JSON number or a string holding one.
fn number_value(name: &str, v: &Value) -> Result<NumericalValue> {
    let n = match v {
        Value::Number(n) => n
            .as_i64()
            .map(NumericalValue::I64)
            .or_else(|| n.as_u64().map(NumericalValue::U64))
            .or_else(|| n.as_f64().map(NumericalValue::F64)),
        Value::String(s) => s.trim().parse::<NumericalValue>().ok(),
        _ => None,
    };
    match n {
        Some(NumericalValue::F64(f)) if !f.is_finite() => None,
        n => n,
    }
    .ok_or_else(|| SearchError::Parse(format!("[{name}]: for input string: [{v}] is not a number")))
}

fn as_f64(n: NumericalValue) -> f64 {
    match n {
        NumericalValue::I64(i) => i as f64,
        NumericalValue::U64(u) => u as f64,
        NumericalValue::F64(f) => f,
    }
}

fn map_bound<T, U>(b: &Bound<T>, f: impl FnOnce(&T) -> Result<U>) -> Result<Bound<U>> {
    Ok(match b {
        Bound::Included(v) => Bound::Included(f(v)?),
        Bound::Excluded(v) => Bound::Excluded(f(v)?),
        Bound::Unbounded => Bound::Unbounded,
    })
}

fn bound_all<T>(b: &Bound<T>, f: impl Fn(&T) -> bool) -> bool {
    match b {
        Bound::Included(v) | Bound::Excluded(v) => f(v),
        Bound::Unbounded => true,
    }
}

fn same_numeric_type(
    lo: &Bound<Option<NumericalValue>>,
    hi: &Bound<Option<NumericalValue>>,
) -> bool {
    let typ = |b: &Bound<Option<NumericalValue>>| match b {
        Bound::Included(Some(n)) | Bound::Excluded(Some(n)) => Some(n.numerical_type()),
        _ => None,
    };
    match (typ(lo), typ(hi)) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

/// The integers between two numeric bounds, as an inclusive u64 range
/// (`None` upper: unbounded); `None` when it is empty.
fn u64_range(lo: Bound<NumericalValue>, hi: Bound<NumericalValue>) -> Option<(u64, Option<u64>)> {
    // Integral values exactly, fractions rounded inwards; in i128 so that
    // neither end overflows.
    let int = |n: NumericalValue, up: bool| -> i128 {
        match n {
            NumericalValue::I64(i) => i128::from(i),
            NumericalValue::U64(u) => i128::from(u),
            NumericalValue::F64(f) if up => f.ceil().clamp(-1e30, 1e30) as i128,
            NumericalValue::F64(f) => f.floor().clamp(-1e30, 1e30) as i128,
        }
    };
    let is_int = |n: &NumericalValue| !matches!(n, NumericalValue::F64(_));
    let lo = match lo {
        Bound::Included(n) => int(n, true),
        Bound::Excluded(n) if is_int(&n) => int(n, false) + 1,
        Bound::Excluded(n) => {
            let f = as_f64(n);
            if f.fract() == 0.0 {
                int(n, false) + 1
            } else {
                int(n, true)
            }
        }
        Bound::Unbounded => 0,
    };
    let hi = match hi {
        Bound::Included(n) => Some(int(n, false)),
        Bound::Excluded(n) if is_int(&n) => Some(int(n, false) - 1),
        Bound::Excluded(n) => {
            let f = as_f64(n);
            Some(if f.fract() == 0.0 {
                int(n, false) - 1
            } else {
                int(n, false)
            })
        }
        Bound::Unbounded => None,
    };
    let lo = lo.max(0);
    match hi {
        Some(hi) if hi < lo => None,
        // An upper bound past u64::MAX bounds nothing.
        Some(hi) => Some((u64::try_from(lo).ok()?, u64::try_from(hi).ok())),
        None => Some((u64::try_from(lo).ok()?, None)),
    }
}

/// The minimum number of `n` should clauses a `minimum_should_match`
/// value asks for: `2`, `"2"`, `"-1"`, `"75%"`, `"-25%"`.
fn minimum_should_match(v: &Value, n: usize) -> Result<usize> {
    let bad = || SearchError::Parse(format!("bad [minimum_should_match] [{v}]"));
    let n = i64::try_from(n).unwrap_or(i64::MAX);
    let k = match v {
        Value::Number(x) => x.as_i64().ok_or_else(bad)?,
        Value::String(s) => {
            let s = s.trim();
            if let Some(p) = s.strip_suffix('%') {
                let p: i64 = p.trim().parse().map_err(|_| bad())?;
                let part = n.saturating_mul(p.abs()) / 100;
                if p < 0 {
                    -part
                } else {
                    part
                }
            } else if s.contains('<') {
                return Err(SearchError::Unsupported(format!(
                    "conditional [minimum_should_match] [{s}] is not supported"
                )));
            } else {
                s.parse().map_err(|_| bad())?
            }
        }
        _ => return Err(bad()),
    };
    let k = if k < 0 { n.saturating_add(k) } else { k };
    Ok(usize::try_from(k.max(0)).unwrap_or(usize::MAX))
}

// ---- dates ----

/// Parses a date or date math expression into epoch milliseconds:
/// digits (millis), RFC 3339, `YYYY-MM-DD[THH:MM[:SS[.fff]]]` (UTC),
/// `now` or `DATE||` followed by `+N<unit>`, `-N<unit>`, `/<unit>`
/// (units `y M w d h H m s`). With `round_up`, a rounding and a date
/// without time land on the last millisecond of their unit.
pub fn parse_date_math(s: &str, now_ms: i64, round_up: bool) -> Option<i64> {
    let (anchor, math) = if let Some(rest) = s.strip_prefix("now") {
        (ms_to_datetime(now_ms)?, rest)
    } else if let Some((date, rest)) = s.split_once("||") {
        (parse_date(date, false)?, rest)
    } else {
        if let Ok(ms) = s.parse::<i64>() {
            return Some(ms);
        }
        let dt = parse_date(s, round_up)?;
        return datetime_to_ms(dt);
    };
    let mut dt = anchor;
    let bytes = math.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let op = bytes[i];
        i += 1;
        match op {
            b'+' | b'-' => {
                let start = i;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                let n: i64 = if start == i {
                    1
                } else {
                    math.get(start..i)?.parse().ok()?
                };
                let unit = *bytes.get(i)?;
                i += 1;
                let n = if op == b'-' { -n } else { n };
                dt = add_units(dt, n, unit)?;
            }
            b'/' => {
                let unit = *bytes.get(i)?;
                i += 1;
                let down = round_down(dt, unit)?;
                dt = if round_up {
                    add_units(down, 1, unit)?.checked_sub(Duration::milliseconds(1))?
                } else {
                    down
                };
            }
            _ => return None,
        }
    }
    datetime_to_ms(dt)
}

fn ms_to_datetime(ms: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

fn datetime_to_ms(dt: OffsetDateTime) -> Option<i64> {
    i64::try_from(dt.unix_timestamp_nanos().div_euclid(1_000_000)).ok()
}

/// A date: RFC 3339, or `YYYY-MM-DD` with an optional time, UTC.
fn parse_date(s: &str, round_up: bool) -> Option<OffsetDateTime> {
    if let Ok(dt) = OffsetDateTime::parse(s, &Rfc3339) {
        return Some(dt);
    }
    if s.len() == 10 {
        let dt = OffsetDateTime::parse(&format!("{s}T00:00:00Z"), &Rfc3339).ok()?;
        return if round_up {
            dt.checked_add(Duration::days(1))?
                .checked_sub(Duration::milliseconds(1))
        } else {
            Some(dt)
        };
    }
    // A date and time without a zone, maybe without seconds: UTC.
    let with_seconds = if s.len() == 16 {
        format!("{s}:00Z")
    } else {
        format!("{s}Z")
    };
    OffsetDateTime::parse(&with_seconds, &Rfc3339).ok()
}

fn add_units(dt: OffsetDateTime, n: i64, unit: u8) -> Option<OffsetDateTime> {
    let fixed = |d: Duration| dt.checked_add(d);
    match unit {
        b's' => fixed(Duration::seconds(n)),
        b'm' => fixed(Duration::minutes(n)),
        b'h' | b'H' => fixed(Duration::hours(n)),
        b'd' => fixed(Duration::days(n)),
        b'w' => fixed(Duration::weeks(n)),
        b'M' | b'y' => {
            let months = if unit == b'y' { n.checked_mul(12)? } else { n };
            let total = i64::from(dt.year())
                .checked_mul(12)?
                .checked_add(i64::from(u8::from(dt.month())) - 1)?
                .checked_add(months)?;
            let year = i32::try_from(total.div_euclid(12)).ok()?;
            let month = Month::try_from(u8::try_from(total.rem_euclid(12) + 1).ok()?).ok()?;
            let day = dt.day().min(month.length(year));
            let date = Date::from_calendar_date(year, month, day).ok()?;
            Some(dt.replace_date(date))
        }
        _ => None,
    }
}

fn round_down(dt: OffsetDateTime, unit: u8) -> Option<OffsetDateTime> {
    let midnight = dt.replace_time(Time::MIDNIGHT);
    match unit {
        b's' => dt.replace_nanosecond(0).ok(),
        b'm' => dt.replace_nanosecond(0).ok()?.replace_second(0).ok(),
        b'h' | b'H' => dt
            .replace_nanosecond(0)
            .ok()?
            .replace_second(0)
            .ok()?
            .replace_minute(0)
            .ok(),
        b'd' => Some(midnight),
        b'w' => midnight.checked_sub(Duration::days(i64::from(
            midnight.weekday().number_days_from_monday(),
        ))),
        b'M' => midnight.replace_day(1).ok(),
        b'y' => midnight
            .replace_day(1)
            .ok()?
            .replace_month(Month::January)
            .ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_math() {
        let now = 1_700_000_000_123; // 2023-11-14T22:13:20.123Z
        assert_eq!(parse_date_math("now", now, false), Some(now));
        assert_eq!(parse_date_math("now-1h", now, false), Some(now - 3_600_000));
        assert_eq!(
            parse_date_math("now/d", now, false),
            Some(1_699_920_000_000)
        );
        assert_eq!(
            parse_date_math("now/d", now, true),
            Some(1_699_920_000_000 + 86_400_000 - 1)
        );
        assert_eq!(
            parse_date_math("2023-11-14T22:13:20.123Z", 0, false),
            Some(now)
        );
        assert_eq!(
            parse_date_math("2023-11-14", 0, false),
            Some(1_699_920_000_000)
        );
        assert_eq!(
            parse_date_math("2024-01-31||+1M", 0, false),
            parse_date_math("2024-02-29", 0, false)
        );
        assert_eq!(
            parse_date_math("2024-03-15||/M", 0, false),
            parse_date_math("2024-03-01", 0, false)
        );
        assert_eq!(parse_date_math("12345", 0, false), Some(12345));
        assert_eq!(parse_date_math("yesterday", 0, false), None);
    }

    #[test]
    fn minimum_should_match_forms() {
        assert_eq!(minimum_should_match(&Value::from(2), 4).unwrap(), 2);
        assert_eq!(minimum_should_match(&Value::from("-1"), 4).unwrap(), 3);
        assert_eq!(minimum_should_match(&Value::from("75%"), 4).unwrap(), 3);
        assert_eq!(minimum_should_match(&Value::from("-25%"), 4).unwrap(), 3);
        assert!(minimum_should_match(&Value::from("x"), 4).is_err());
    }

    #[test]
    fn integer_ranges() {
        use NumericalValue::*;
        assert_eq!(
            u64_range(Bound::Excluded(I64(5)), Bound::Excluded(I64(9))),
            Some((6, Some(8)))
        );
        assert_eq!(
            u64_range(Bound::Included(F64(1.5)), Bound::Included(F64(3.5))),
            Some((2, Some(3)))
        );
        assert_eq!(u64_range(Bound::Unbounded, Bound::Included(I64(-1))), None);
        assert_eq!(
            u64_range(Bound::Included(I64(-10)), Bound::Unbounded),
            Some((0, None))
        );
    }

    #[test]
    fn json_numbers_are_encoded_as_tantivy_indexes_them() {
        let f = Fields::new();
        let p = Parser::new(&f, 0);
        let n = |s: &str| -> serde_json::Number { serde_json::from_str(s).unwrap() };
        let mut want = Term::from_field_json_path(f.json_keyword, "latency", true);
        want.append_type_and_fast_value(5i64);
        assert_eq!(
            p.json_number_term(f.json_keyword, "latency", &n("5")),
            Some(want.clone())
        );
        assert_eq!(
            p.json_number_term(f.json_keyword, "latency", &n("5.0")),
            Some(want)
        );
        let mut big = Term::from_field_json_path(f.json_keyword, "latency", true);
        big.append_type_and_fast_value(u64::MAX);
        assert_eq!(
            p.json_number_term(f.json_keyword, "latency", &n("18446744073709551615")),
            Some(big)
        );
        let mut frac = Term::from_field_json_path(f.json_keyword, "latency", true);
        frac.append_type_and_fast_value(2.5f64);
        assert_eq!(
            p.json_number_term(f.json_keyword, "latency", &n("2.5")),
            Some(frac)
        );
    }

    #[test]
    fn unsupported_queries_are_named() {
        let f = Fields::new();
        for (q, name) in [
            (serde_json::json!({"fuzzy": {"user": "ann"}}), "fuzzy"),
            (serde_json::json!({"wildcard": {"user": "a*"}}), "wildcard"),
            (serde_json::json!({"geo_distance": {}}), "geo_distance"),
            (
                serde_json::json!({"bool": {"must": {"regexp": {"a": "b"}}}}),
                "regexp",
            ),
        ] {
            match parse_query(&f, &q) {
                Err(SearchError::Unsupported(m)) => assert!(m.contains(name), "{m}"),
                other => panic!("{q}: {other:?}"),
            }
        }
        assert!(matches!(
            parse_query(
                &f,
                &serde_json::json!({"match": {"a": "b"}, "term": {"a": "b"}})
            ),
            Err(SearchError::Parse(_))
        ));
        assert!(matches!(
            parse_query(&f, &serde_json::json!({"match": {"a": {"query": "b", "fuzziness": 2}}})),
            Err(SearchError::Unsupported(m)) if m.contains("fuzziness")
        ));
        assert!(matches!(
            parse_query(&f, &serde_json::json!({"query_string": {"query": "ab*"}})),
            Err(SearchError::Unsupported(m)) if m.contains("wildcard")
        ));
        assert!(matches!(
            parse_query(&f, &serde_json::json!({"query_string": {"query": "\"ab\"*"}})),
            Err(SearchError::Unsupported(m)) if m.contains("prefix")
        ));
        assert!(matches!(
            parse_query(&f, &serde_json::json!({"query_string": {"query": "a:/b.*/"}})),
            Err(SearchError::Unsupported(m)) if m.contains("regular")
        ));
    }
}

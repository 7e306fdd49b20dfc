"""Sluice's Elasticsearch-compatible API through the official `elasticsearch`
client (8.x) and `opensearch-py`: every query type and aggregation of the
contract, answers checked against what `search.rs` produced (exact hit
sets, counts and values), pagination with from/size, and the errors of an
unsupported query and of a too large result window.

Data (see `search.rs`, `es_clients`): topics `logs-app` and `logs-web` with
JSON records `{"user", "level", "latency", "msg", "payload": {"id", "n"}}`
(payload on two records of three), keys, headers `trace` and `src`, and
plain-text records (`message`) in `logs-web`.
"""

import math
from collections import Counter

import pytest

from conftest import tokens

INDEX = "logs-*"
WINDOW = 10_000


def ids(resp):
    """The (index, partition, offset) of each hit, checking `_id`."""
    out = []
    for h in resp["hits"]["hits"]:
        key = (h["_index"], h["_partition"], h["_offset"])
        assert h["_id"] == f"{h['_partition']}-{h['_offset']}", h
        out.append(key)
    return out


def total(resp):
    t = resp["hits"]["total"]
    return t["value"] if isinstance(t, dict) else t


def search_all(api, index, query, extra=None):
    """Every hit of `query` in one page (the expected sets are < 10000)."""
    body = {"query": query, "size": 5_000}
    body.update(extra or {})
    return api.search(index=index, body=body)


def match_tokens(field, text, operator="or"):
    want = tokens(text)

    def pred(r):
        v = r.get(field)
        if not isinstance(v, str):
            return False
        have = set(tokens(v))
        if operator == "and":
            return all(t in have for t in want)
        return any(t in have for t in want)

    return pred


def phrase(field, text):
    want = tokens(text)

    def pred(r):
        v = r.get(field)
        if not isinstance(v, str):
            return False
        have = tokens(v)
        n = len(want)
        return any(have[i : i + n] == want for i in range(len(have) - n + 1))

    return pred


def number(r, field):
    v = r.get(field)
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def in_range(field, gte=None, gt=None, lte=None, lt=None):
    def pred(r):
        v = number(r, field)
        if v is None:
            return False
        return (
            (gte is None or v >= gte)
            and (gt is None or v > gt)
            and (lte is None or v <= lte)
            and (lt is None or v < lt)
        )

    return pred


def some_key(expected):
    return next(r for r in expected.records if r.topic == "logs-web" and r.is_json).key


def some_trace(expected):
    return expected.records[len(expected.records) // 3].headers["trace"]


def time_window(expected):
    ts = sorted(r.timestamp for r in expected.records)
    return ts[len(ts) // 4], ts[len(ts) // 2]


def cases(expected):
    """(name, index, query, predicate) of every query type."""
    t0, t1 = time_window(expected)
    key = some_key(expected)
    trace = some_trace(expected)
    error = lambda r: r.get("level.keyword") == "error"  # noqa: E731
    return [
        ("match_all", INDEX, {"match_all": {}}, lambda r: True),
        ("match one word", INDEX, {"match": {"msg": "timeout"}}, match_tokens("msg", "timeout")),
        ("match words (or)", INDEX, {"match": {"msg": "disk full"}}, match_tokens("msg", "disk full")),
        (
            "match words (and)",
            INDEX,
            {"match": {"msg": {"query": "disk timeout", "operator": "and"}}},
            match_tokens("msg", "disk timeout", "and"),
        ),
        ("match one topic", "logs-app", {"match": {"msg": "cache"}}, match_tokens("msg", "cache")),
        ("match message", INDEX, {"match": {"message": "served"}}, match_tokens("message", "served")),
        (
            "match_phrase",
            INDEX,
            {"match_phrase": {"msg": "connection reset"}},
            phrase("msg", "connection reset"),
        ),
        (
            "match_phrase across values",
            INDEX,
            {"match_phrase": {"msg": "by peer request"}},
            phrase("msg", "by peer request"),
        ),
        (
            "match_phrase header",
            INDEX,
            {"match_phrase": {"_headers.trace": trace}},
            phrase("_headers.trace", trace),
        ),
        (
            "multi_match",
            INDEX,
            {"multi_match": {"query": "ann", "fields": ["user", "msg"]}},
            lambda r: match_tokens("user", "ann")(r) or match_tokens("msg", "ann")(r),
        ),
        ("term keyword", INDEX, {"term": {"user.keyword": "bob"}}, lambda r: r.get("user.keyword") == "bob"),
        (
            "term keyword (value form)",
            INDEX,
            {"term": {"level.keyword": {"value": "error"}}},
            error,
        ),
        ("term key", INDEX, {"term": {"_key.keyword": key}}, lambda r: r.key == key),
        (
            "term nested path",
            INDEX,
            {"term": {"payload.id.keyword": "p-7"}},
            lambda r: r.get("payload.id.keyword") == "p-7",
        ),
        ("term number", INDEX, {"term": {"latency": 250}}, lambda r: number(r, "latency") == 250),
        (
            "terms",
            INDEX,
            {"terms": {"level.keyword": ["warn", "error"]}},
            lambda r: r.get("level.keyword") in ("warn", "error"),
        ),
        (
            "range number",
            INDEX,
            {"range": {"latency": {"gte": 100, "lt": 300}}},
            in_range("latency", gte=100, lt=300),
        ),
        (
            "range @timestamp",
            INDEX,
            {"range": {"@timestamp": {"gte": t0, "lt": t1}}},
            in_range("@timestamp", gte=t0, lt=t1),
        ),
        (
            "range _offset",
            INDEX,
            {"range": {"_offset": {"gte": 10, "lte": 20}}},
            in_range("_offset", gte=10, lte=20),
        ),
        ("range _partition", INDEX, {"range": {"_partition": {"gt": 0}}}, in_range("_partition", gt=0)),
        ("exists path", INDEX, {"exists": {"field": "payload.id"}}, lambda r: r.get("payload.id") is not None),
        ("exists message", INDEX, {"exists": {"field": "message"}}, lambda r: r.get("message") is not None),
        (
            "bool must filter must_not",
            INDEX,
            {
                "bool": {
                    "must": [{"match": {"msg": "timeout"}}],
                    "filter": [{"range": {"latency": {"gte": 200}}}],
                    "must_not": [{"term": {"level.keyword": "debug"}}],
                }
            },
            lambda r: match_tokens("msg", "timeout")(r)
            and in_range("latency", gte=200)(r)
            and r.get("level.keyword") != "debug",
        ),
        (
            "bool should only",
            INDEX,
            {"bool": {"should": [{"term": {"user.keyword": "ann"}}, {"term": {"user.keyword": "bob"}}]}},
            lambda r: r.get("user.keyword") in ("ann", "bob"),
        ),
        (
            "bool must with optional should",
            INDEX,
            {"bool": {"must": [{"match": {"level": "error"}}], "should": [{"term": {"user.keyword": "ann"}}]}},
            match_tokens("level", "error"),
        ),
        (
            "bool filter only",
            "logs-app",
            {"bool": {"filter": [{"term": {"level.keyword": "info"}}, {"range": {"_partition": {"lte": 0}}}]}},
            lambda r: r.get("level.keyword") == "info" and r.partition <= 0,
        ),
        (
            "nested bool",
            INDEX,
            {
                "bool": {
                    "filter": [
                        {"bool": {"should": [{"term": {"level.keyword": "warn"}}, {"term": {"level.keyword": "error"}}]}}
                    ],
                    "must_not": [{"bool": {"must": [{"term": {"user.keyword": "ann"}}]}}],
                }
            },
            lambda r: r.get("level.keyword") in ("warn", "error") and r.get("user.keyword") != "ann",
        ),
        (
            "query_string default field",
            INDEX,
            {"query_string": {"query": "timeout"}},
            lambda r: "timeout" in tokens(r.all_text()),
        ),
        (
            "query_string fields and AND",
            INDEX,
            {"query_string": {"query": "level:error AND msg:disk"}},
            lambda r: match_tokens("level", "error")(r) and match_tokens("msg", "disk")(r),
        ),
        (
            "query_string OR",
            INDEX,
            {"query_string": {"query": "user:ann OR user:bob"}},
            lambda r: match_tokens("user", "ann bob")(r),
        ),
    ]


def test_info_and_ping(api, es, opensearch):
    info = es.info().body
    assert info["version"]["number"].startswith("8."), info
    assert "tagline" in info or "cluster_name" in info, info
    assert es.ping() is True
    oinfo = opensearch.info()
    assert oinfo["version"]["number"].startswith("8."), oinfo
    assert opensearch.ping() is True


def test_counts_of_index_patterns(api, expected):
    for index in ["logs-app", "logs-web", "logs-*", "logs-app,logs-web", "_all", None]:
        want = len(expected.of(index))
        assert api.count(index=index) == want, f"{api.name}: count of {index}"
    err = lambda r: r.get("level.keyword") == "error"  # noqa: E731
    q = {"term": {"level.keyword": "error"}}
    assert api.count(index="logs-app", query=q) == len(expected.where("logs-app", err))
    assert api.count(index=INDEX, query=q) == len(expected.where(INDEX, err))


def test_search_of_index_patterns(api, expected):
    for index in ["logs-app", "logs-web", "logs-*", "logs-app,logs-web", "_all", None]:
        want = sorted(r.ident for r in expected.of(index))
        resp = search_all(api, index, {"match_all": {}})
        assert total(resp) == len(want), f"{api.name}: total of {index}"
        assert sorted(ids(resp)) == want, f"{api.name}: hits of {index}"


@pytest.mark.parametrize("case", range(30))
def test_query_types(api, expected, case):
    all_cases = cases(expected)
    if case >= len(all_cases):
        pytest.skip("no such case")
    name, index, query, pred = all_cases[case]
    want = sorted(r.ident for r in expected.where(index, pred))
    resp = search_all(api, index, query)
    got = ids(resp)
    assert total(resp) == len(want), f"{api.name} {name}: total {total(resp)}, expected {len(want)}"
    assert len(got) == len(set(got)), f"{api.name} {name}: a hit twice"
    missing = sorted(set(want) - set(got))[:5]
    extra = sorted(set(got) - set(want))[:5]
    assert sorted(got) == want, f"{api.name} {name}: missing {missing}, unexpected {extra}"
    assert api.count(index=index, query=query) == len(want), f"{api.name} {name}: _count"


def test_every_query_case_is_run_and_selects_something(expected):
    assert len(cases(expected)) <= 30, "raise the parametrize range of test_query_types"
    for name, index, _q, pred in cases(expected):
        n = len(expected.where(index, pred))
        assert n > 0, f"case {name} selects nothing: fix the data"
        if name != "match_all":
            assert n < len(expected.of(index)), f"case {name} selects everything: fix the data"


def test_hits_carry_the_record(api, expected):
    by_ident = {r.ident: r for r in expected.records}
    resp = api.search(index=INDEX, body={"query": {"match_all": {}}, "size": 50})
    hits = resp["hits"]["hits"]
    assert len(hits) == 50
    for h in hits:
        r = by_ident[(h["_index"], h["_partition"], h["_offset"])]
        if r.is_json:
            assert h["_source"] == r.doc, h
        else:
            assert h.get("_source") in (r.value, {"message": r.value}), h
        assert h["_key"] == r.key, h
        assert isinstance(h["_headers"], dict), h
        assert h["_headers"].get("trace") == r.headers["trace"], h
        assert h["_headers"].get("src") == r.headers["src"], h


def test_sort_by_offset_within_a_partition(api, expected):
    want = sorted(r.offset for r in expected.of("logs-app") if r.partition == 1)
    q = {"range": {"_partition": {"gte": 1, "lte": 1}}}
    asc = api.search(index="logs-app", body={"query": q, "size": 5_000, "sort": [{"_offset": {"order": "asc"}}]})
    assert [h["_offset"] for h in asc["hits"]["hits"]] == want
    desc = api.search(index="logs-app", body={"query": q, "size": 10, "sort": [{"_offset": "desc"}]})
    assert [h["_offset"] for h in desc["hits"]["hits"]] == want[::-1][:10]


def test_sort_by_timestamp_and_score(api, expected):
    want = [r.ident for r in sorted(expected.of(INDEX), key=lambda r: r.timestamp, reverse=True)][:25]
    resp = api.search(
        index=INDEX, body={"query": {"match_all": {}}, "size": 25, "sort": [{"@timestamp": {"order": "desc"}}]}
    )
    assert ids(resp) == want
    resp = api.search(
        index=INDEX,
        body={"query": {"match": {"msg": "disk timeout"}}, "size": 200, "sort": ["_score"]},
    )
    scores = [h["_score"] for h in resp["hits"]["hits"]]
    assert scores and all(s is not None for s in scores)
    assert scores == sorted(scores, reverse=True), scores[:20]
    # Without a sort, hits come by relevance: both words before either one.
    resp = api.search(index=INDEX, body={"query": {"match": {"msg": "disk timeout"}}, "size": 5})
    both = match_tokens("msg", "disk timeout", "and")
    by_ident = {r.ident: r for r in expected.records}
    assert all(both(by_ident[i]) for i in ids(resp)), ids(resp)


@pytest.mark.parametrize("page", [1, 173, 1000])
def test_pagination_covers_every_hit_once(api, expected, page):
    if page == 1:
        # One hit a page over a small result: from/size one by one.
        index, query, pred = "logs-web", {"term": {"user.keyword": "fay"}}, lambda r: r.get("user.keyword") == "fay"
    else:
        index, query, pred = INDEX, {"match_all": {}}, lambda r: True
    want = sorted(expected.where(index, pred), key=lambda r: r.timestamp)
    assert want
    seen = []
    start = 0
    while True:
        resp = api.search(
            index=index,
            body={"query": query, "from": start, "size": page, "sort": [{"@timestamp": {"order": "asc"}}]},
        )
        assert total(resp) == len(want)
        got = ids(resp)
        if not got:
            break
        assert len(got) <= page
        seen.extend(got)
        start += page
        assert start <= len(want) + page, "pages past the end keep returning hits"
    assert len(seen) == len(set(seen)), f"{api.name}: a hit on two pages"
    assert seen == [r.ident for r in want], f"{api.name}: pages in timestamp order cover every hit"


def test_source_filtering(api, expected):
    resp = api.search(
        index="logs-app",
        body={"query": {"exists": {"field": "payload.id"}}, "size": 20, "_source": ["user", "level"]},
    )
    hits = resp["hits"]["hits"]
    assert len(hits) == 20
    by_ident = {r.ident: r for r in expected.records}
    for h in hits:
        r = by_ident[(h["_index"], h["_partition"], h["_offset"])]
        assert h["_source"] == {"user": r.doc["user"], "level": r.doc["level"]}, h
    resp = api.search(index="logs-app", body={"query": {"match_all": {}}, "size": 5, "_source": False})
    for h in resp["hits"]["hits"]:
        assert not h.get("_source"), h


def approx(a, b):
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)


def test_metric_aggregations(api, expected):
    recs = expected.of(INDEX)
    lat = [number(r, "latency") for r in recs if number(r, "latency") is not None]
    users = {r.get("user.keyword") for r in recs if r.get("user.keyword") is not None}
    aggs = {
        "avg_l": {"avg": {"field": "latency"}},
        "min_l": {"min": {"field": "latency"}},
        "max_l": {"max": {"field": "latency"}},
        "sum_l": {"sum": {"field": "latency"}},
        "stats_l": {"stats": {"field": "latency"}},
        "count_l": {"value_count": {"field": "latency"}},
        "users": {"cardinality": {"field": "user.keyword"}},
    }
    resp = api.search(index=INDEX, body={"size": 0, "aggs": aggs})
    assert resp["hits"]["hits"] == []
    assert total(resp) == len(recs)
    a = resp["aggregations"]
    assert approx(a["avg_l"]["value"], sum(lat) / len(lat)), a["avg_l"]
    assert approx(a["min_l"]["value"], min(lat)), a["min_l"]
    assert approx(a["max_l"]["value"], max(lat)), a["max_l"]
    assert approx(a["sum_l"]["value"], sum(lat)), a["sum_l"]
    s = a["stats_l"]
    assert s["count"] == len(lat), s
    assert approx(s["min"], min(lat)) and approx(s["max"], max(lat)), s
    assert approx(s["sum"], sum(lat)) and approx(s["avg"], sum(lat) / len(lat)), s
    assert a["count_l"]["value"] == len(lat), a["count_l"]
    assert a["users"]["value"] == len(users), a["users"]


def test_metric_aggregations_on_record_fields(api, expected):
    """Metrics of the record's own fields: `@timestamp` in epoch
    milliseconds, as Elasticsearch gives a date field's min and max."""
    recs = expected.of(INDEX)
    aggs = {
        "min_ts": {"min": {"field": "@timestamp"}},
        "max_ts": {"max": {"field": "@timestamp"}},
        "max_off": {"max": {"field": "_offset"}},
        "parts": {"cardinality": {"field": "_partition"}},
    }
    a = api.search(index=INDEX, body={"size": 0, "aggs": aggs})["aggregations"]
    assert approx(a["max_off"]["value"], max(r.offset for r in recs)), a["max_off"]
    assert a["parts"]["value"] == len({r.partition for r in recs}), a["parts"]
    assert approx(a["min_ts"]["value"], min(r.timestamp for r in recs)), a["min_ts"]
    assert approx(a["max_ts"]["value"], max(r.timestamp for r in recs)), a["max_ts"]


def check_terms(buckets, want, size=None):
    """`buckets` are the top `size` of `want` (a Counter) by count: equal
    counts may come in any order."""
    counts = [b["doc_count"] for b in buckets]
    assert counts == sorted(counts, reverse=True), buckets
    top = sorted(want.items(), key=lambda kv: (-kv[1], kv[0]))
    if size is not None:
        top = top[:size]
        # The cut must not fall between equal counts for the check to be exact.
        assert len(want) <= size or sorted(want.values(), reverse=True)[size - 1] != sorted(
            want.values(), reverse=True
        )[size], "fix the data: a tie at the cut"
    assert {b["key"]: b["doc_count"] for b in buckets} == dict(top), buckets


def test_terms_aggregations(api, expected):
    recs = expected.of(INDEX)
    levels = Counter(r.get("level.keyword") for r in recs if r.get("level.keyword"))
    users = Counter(r.get("user.keyword") for r in recs if r.get("user.keyword"))
    resp = api.search(
        index=INDEX,
        body={
            "size": 0,
            "aggs": {
                "levels": {"terms": {"field": "level.keyword"}},
                "top_users": {"terms": {"field": "user.keyword", "size": 3}},
            },
        },
    )
    a = resp["aggregations"]
    check_terms(a["levels"]["buckets"], levels)
    check_terms(a["top_users"]["buckets"], users, size=3)
    top3 = sum(sorted(users.values(), reverse=True)[:3])
    assert a["top_users"]["sum_other_doc_count"] == sum(users.values()) - top3, a["top_users"]

    # Under a query: the buckets of the matching records only.
    err = [r for r in recs if r.get("level.keyword") == "error"]
    resp = api.search(
        index=INDEX,
        body={
            "size": 0,
            "query": {"term": {"level.keyword": "error"}},
            "aggs": {"users": {"terms": {"field": "user.keyword", "size": 20}}},
        },
    )
    assert total(resp) == len(err)
    check_terms(resp["aggregations"]["users"]["buckets"], Counter(r.get("user.keyword") for r in err))


def test_terms_with_sub_aggregation(api, expected):
    recs = expected.of(INDEX)
    resp = api.search(
        index=INDEX,
        body={
            "size": 0,
            "aggs": {
                "levels": {
                    "terms": {"field": "level.keyword"},
                    "aggs": {"lat": {"avg": {"field": "latency"}}, "hi": {"max": {"field": "latency"}}},
                }
            },
        },
    )
    buckets = resp["aggregations"]["levels"]["buckets"]
    assert buckets
    for b in buckets:
        lat = [number(r, "latency") for r in recs if r.get("level.keyword") == b["key"]]
        assert b["doc_count"] == len(lat), b
        assert approx(b["lat"]["value"], sum(lat) / len(lat)), b
        assert approx(b["hi"]["value"], max(lat)), b


def test_histogram_aggregations(api, expected):
    recs = expected.of(INDEX)
    interval_ms = 5 * 60 * 1000
    per_time = Counter(r.timestamp - r.timestamp % interval_ms for r in recs)
    lat = [number(r, "latency") for r in recs if number(r, "latency") is not None]
    per_lat = Counter(v - v % 100 for v in lat)
    resp = api.search(
        index=INDEX,
        body={
            "size": 0,
            "aggs": {
                "over_time": {"date_histogram": {"field": "@timestamp", "fixed_interval": "5m"}},
                "latency": {"histogram": {"field": "latency", "interval": 100}},
            },
        },
    )
    a = resp["aggregations"]
    got_time = {int(b["key"]): b["doc_count"] for b in a["over_time"]["buckets"]}
    for b in a["over_time"]["buckets"]:
        assert "key_as_string" in b, b
    assert {k: v for k, v in got_time.items() if v} == dict(per_time), a["over_time"]
    keys = [int(b["key"]) for b in a["over_time"]["buckets"]]
    assert keys == sorted(keys)
    got_lat = {float(b["key"]): b["doc_count"] for b in a["latency"]["buckets"]}
    assert {k: v for k, v in got_lat.items() if v} == {float(k): v for k, v in per_lat.items()}, a["latency"]

    # A date histogram of a query with a metric in each bucket.
    warn = [r for r in recs if r.get("level.keyword") == "warn"]
    resp = api.search(
        index=INDEX,
        body={
            "size": 0,
            "query": {"term": {"level.keyword": "warn"}},
            "aggs": {
                "t": {
                    "date_histogram": {"field": "@timestamp", "fixed_interval": "10m"},
                    "aggs": {"s": {"sum": {"field": "latency"}}},
                }
            },
        },
    )
    interval_ms = 10 * 60 * 1000
    for b in resp["aggregations"]["t"]["buckets"]:
        inside = [r for r in warn if r.timestamp - r.timestamp % interval_ms == int(b["key"])]
        assert b["doc_count"] == len(inside), b
        if inside:
            assert approx(b["s"]["value"], sum(number(r, "latency") for r in inside)), b
    assert sum(b["doc_count"] for b in resp["aggregations"]["t"]["buckets"]) == len(warn)


def test_unsupported_query_is_a_bad_request_naming_it(api):
    with pytest.raises(api.bad_request()) as info:
        api.search(index=INDEX, body={"query": {"fuzzy": {"user.keyword": {"value": "anne"}}}})
    assert api.error_status(info.value) == 400
    assert "fuzzy" in api.error_text(info.value), api.error_text(info.value)


def test_error_body_is_shaped_like_elasticsearch(es):
    from elasticsearch import BadRequestError

    with pytest.raises(BadRequestError) as info:
        es.search(index=INDEX, query={"fuzzy": {"user.keyword": "anne"}})
    body = info.value.body
    assert body["status"] == 400, body
    assert isinstance(body["error"], dict), body
    assert body["error"]["type"], body
    assert "fuzzy" in body["error"]["reason"], body


def test_result_window_is_bounded(api, expected):
    # from + size up to 10000 is served ...
    resp = api.search(index=INDEX, body={"query": {"match_all": {}}, "from": WINDOW - 10, "size": 10})
    assert resp["hits"]["hits"] == []
    assert total(resp) == len(expected.of(INDEX))
    # ... beyond it is refused, as Elasticsearch does.
    with pytest.raises(api.bad_request()) as info:
        api.search(index=INDEX, body={"query": {"match_all": {}}, "from": WINDOW - 5, "size": 10})
    assert api.error_status(info.value) == 400


def test_match_phrase_keeps_word_order(api, expected):
    assert len(expected.where(INDEX, phrase("msg", "connection reset"))) > 0
    assert not expected.where(INDEX, phrase("msg", "reset connection"))
    resp = api.search(index=INDEX, body={"query": {"match_phrase": {"msg": "reset connection"}}})
    assert total(resp) == 0, resp["hits"]

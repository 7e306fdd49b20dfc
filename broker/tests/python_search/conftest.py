"""Fixtures of the Elasticsearch-client suite (run by `broker/tests/search.rs`).

Environment:
- `SLUICE_ADMIN`: host:port of the broker's admin HTTP listener (the
  Elasticsearch-compatible API);
- `SLUICE_EXPECTED`: a JSON file the Rust side wrote after producing:
  `{"searchable": [topic...], "topics": {topic: partitions},
  "records": [{"topic", "partition", "offset", "key", "value",
  "timestamp", "headers": {name: value}}]}` with every record of the
  searchable topics (acknowledged, and indexed before the suite starts).

Every expected answer is computed here from that file, never from the
broker. Without the variables the suite is skipped (it needs a broker).
"""

import json
import os
import re

import pytest

ADMIN = os.environ.get("SLUICE_ADMIN")
EXPECTED = os.environ.get("SLUICE_EXPECTED")

TIMEOUT_S = 30


def pytest_collection_modifyitems(config, items):
    if ADMIN and EXPECTED:
        return
    skip = pytest.mark.skip(reason="SLUICE_ADMIN and SLUICE_EXPECTED are set by search.rs")
    for item in items:
        item.add_marker(skip)


_TOKEN = re.compile(r"[0-9a-z]+")


def tokens(text):
    """Analysed tokens of a text (letters and digits, lower case), as
    Elasticsearch's standard analyzer and Tantivy's default one give them
    for ASCII words."""
    return _TOKEN.findall(str(text).lower())


class Rec:
    """One produced record and its document."""

    def __init__(self, raw):
        self.topic = raw["topic"]
        self.partition = raw["partition"]
        self.offset = raw["offset"]
        self.key = raw.get("key")
        self.value = raw.get("value")
        self.timestamp = raw["timestamp"]
        self.headers = raw.get("headers") or {}
        self.doc = None
        self.is_json = False
        if self.value is not None:
            if self.value.startswith("{"):
                try:
                    parsed = json.loads(self.value)
                    if isinstance(parsed, dict):
                        self.doc = parsed
                        self.is_json = True
                except ValueError:
                    pass
            if self.doc is None:
                self.doc = {"message": self.value}
        if self.doc is None:
            self.doc = {}

    @property
    def ident(self):
        return (self.topic, self.partition, self.offset)

    def path(self, name):
        cur = self.doc
        for part in name.split("."):
            if not isinstance(cur, dict) or part not in cur:
                return None
            cur = cur[part]
        return cur

    def get(self, field):
        """The value of an Elasticsearch field name (None when absent)."""
        if field == "@timestamp":
            return self.timestamp
        if field == "_offset":
            return self.offset
        if field == "_partition":
            return self.partition
        if field in ("_key", "_key.keyword"):
            return self.key
        if field in ("_index", "_topic"):
            return self.topic
        if field.startswith("_headers."):
            name = field[len("_headers."):]
            if name.endswith(".keyword"):
                name = name[: -len(".keyword")]
            return self.headers.get(name)
        if field.endswith(".keyword"):
            v = self.path(field[: -len(".keyword")])
            return v if isinstance(v, str) else None
        return self.path(field)

    def all_text(self):
        """Every string of the value and the key (the default field of
        query_string)."""
        out = []

        def walk(v):
            if isinstance(v, str):
                out.append(v)
            elif isinstance(v, dict):
                for x in v.values():
                    walk(x)
            elif isinstance(v, list):
                for x in v:
                    walk(x)

        walk(self.doc)
        if self.key is not None:
            out.append(self.key)
        return " ".join(out)


class Expected:
    def __init__(self, path):
        with open(path) as f:
            raw = json.load(f)
        self.searchable = list(raw["searchable"])
        self.topics = dict(raw["topics"])
        self.records = [Rec(r) for r in raw["records"] if r["topic"] in self.searchable]

    def of(self, index):
        """The records an index expression designates."""
        if index is None or index in ("_all", "*"):
            names = set(self.searchable)
        else:
            names = set()
            for part in index.split(","):
                if part.endswith("*"):
                    names |= {t for t in self.searchable if t.startswith(part[:-1])}
                else:
                    names.add(part)
        return [r for r in self.records if r.topic in names]

    def where(self, index, pred):
        return [r for r in self.of(index) if pred(r)]


@pytest.fixture(scope="session")
def expected():
    return Expected(EXPECTED)


@pytest.fixture(scope="session")
def es():
    from elasticsearch import Elasticsearch

    client = Elasticsearch(f"http://{ADMIN}", request_timeout=TIMEOUT_S)
    yield client
    client.close()


@pytest.fixture(scope="session")
def opensearch():
    from opensearchpy import OpenSearch

    host, port = ADMIN.rsplit(":", 1)
    client = OpenSearch(hosts=[{"host": host, "port": int(port)}], timeout=TIMEOUT_S)
    yield client
    client.close()


class EsApi:
    """The official `elasticsearch` client, keyword arguments."""

    name = "elasticsearch"

    def __init__(self, client):
        self.client = client

    def search(self, index=None, body=None):
        body = dict(body or {})
        kwargs = {}
        for k, v in body.items():
            if k == "from":
                kwargs["from_"] = v
            elif k == "_source":
                kwargs["source"] = v
            else:
                kwargs[k] = v
        if index is not None:
            kwargs["index"] = index
        return self.client.search(**kwargs).body

    def count(self, index=None, query=None):
        kwargs = {}
        if index is not None:
            kwargs["index"] = index
        if query is not None:
            kwargs["query"] = query
        return self.client.count(**kwargs).body["count"]

    def bad_request(self):
        from elasticsearch import BadRequestError

        return BadRequestError

    def error_text(self, err):
        return f"{err} {json.dumps(err.body)}"

    def error_status(self, err):
        return err.meta.status


class OsApi:
    """`opensearch-py`, request bodies."""

    name = "opensearch-py"

    def __init__(self, client):
        self.client = client

    def search(self, index=None, body=None):
        return self.client.search(index=index, body=body or {})

    def count(self, index=None, query=None):
        body = {"query": query} if query is not None else None
        return self.client.count(index=index, body=body)["count"]

    def bad_request(self):
        from opensearchpy.exceptions import RequestError

        return RequestError

    def error_text(self, err):
        return f"{err} {json.dumps(err.info) if not isinstance(err.info, str) else err.info}"

    def error_status(self, err):
        return err.status_code


@pytest.fixture(params=["elasticsearch", "opensearch-py"])
def api(request, es, opensearch):
    return EsApi(es) if request.param == "elasticsearch" else OsApi(opensearch)

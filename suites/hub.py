"""Suites backed by HF datasets: the hub ids lmms-eval uses, a local directory, or our fixtures.

Prompts reproduce lmms-eval's `doc_to_text` with each task's default kwargs; scores reproduce
its `process_results` + aggregation (all four aggregate to the mean of per-sample scores).
The images go first in the user turn (separated by a space), then the text, as lmms-eval's
LLaVA model places them. In long-answer mode (the default, as everywhere) the task's
short-answer post-prompt is replaced by the papers' instruction
(vispec_bench.plugins.suite.LONG_ANSWER_INSTRUCTION).

Loading keeps the split as `datasets` opens it (Arrow, memory-mapped): no row is read until it
is chosen. `keep` sees only the `keep_columns` of each row, images undecoded, so selecting
`--limit` samples decodes the images of the chosen rows and no others.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vispec_bench.errors import UserError
from vispec_bench.plugins.suite import Sample, Suite

FIXTURES = Path(__file__).parent / "fixtures"


class SuiteDataError(UserError, FileNotFoundError):
    pass


@dataclass
class DatasetSource:
    path: str  # hub id or local directory
    name: str | None = None
    split: str = "test"
    revision: str | None = None


class HubSuite(Suite):
    name = ""
    default_source: DatasetSource
    splits = None  # any split the dataset holds; loading it fails clearly if it is absent
    keep_columns: tuple[str, ...] = ()  # the columns `keep` reads; none: every row is a candidate

    def __init__(self, prompt_mode="long", split: str | None = None, path: str | None = None,
                 name: str | None = None, revision: str | None = None, fixtures: bool = False):
        default = self.default_source
        super().__init__(prompt_mode, split or default.split)
        if type(self).keep is not HubSuite.keep and not self.keep_columns:
            raise TypeError(f"{type(self).__name__} overrides keep() but declares no keep_columns (the columns it reads)")
        if fixtures and self.split != default.split:
            raise ValueError(f"{self.name}: the bundled fixtures hold only the {default.split!r} split, "
                             f"not {self.split!r}")
        self.source = DatasetSource(path or default.path, name if name is not None else default.name,
                                    self.split, revision or default.revision)
        self.fixtures = fixtures
        self.dataset = self._load()
        self.row_indices = self._kept_rows()  # candidate i is dataset row row_indices[i]
        if not self.row_indices:
            raise SuiteDataError(f"{self.name}: no usable rows in {self.describe_source()}")

    def _kept_rows(self) -> list[int]:
        """Indices of the rows `keep` admits, read from `keep_columns` alone with images undecoded
        (Arrow rows as plain data: an image is {"bytes", "path"} or None)."""
        if not self.keep_columns:
            return list(range(len(self.dataset)))
        columns = self.dataset.select_columns(list(self.keep_columns)).with_format("arrow")
        kept, offset = [], 0
        for batch in columns.iter(batch_size=1024):
            rows = batch.to_pylist()
            kept += [offset + i for i, row in enumerate(rows) if self.keep(row)]
            offset += len(rows)
        return kept

    def describe_source(self) -> str:
        if self.fixtures:
            return f"fixtures {FIXTURES / self.name}"
        s = self.source
        return f"{s.path}" + (f" ({s.name})" if s.name else "") + f" split {s.split}" + (
            f" @ {s.revision}" if s.revision else "")

    def _load(self):
        import datasets

        if self.fixtures:
            return datasets.load_from_disk(str(FIXTURES / self.name))
        source = self.source
        local = Path(source.path).expanduser()
        try:
            if local.is_dir() and (local / "dataset_info.json").exists():  # a save_to_disk directory
                loaded = datasets.load_from_disk(str(local))
                return loaded[source.split] if isinstance(loaded, datasets.DatasetDict) else loaded
            return datasets.load_dataset(str(local) if local.is_dir() else source.path, source.name,
                                         split=source.split, revision=source.revision)
        except Exception as err:  # hub unreachable, not in the cache, wrong split/config...
            raise SuiteDataError(
                f"{self.name}: cannot load {self.describe_source()} ({type(err).__name__}: {err}). "
                f"Download it where the hub is reachable — `huggingface-cli download --repo-type dataset "
                f"{self.default_source.path}` fills the HF cache (HF_HOME), then run with HF_DATASETS_OFFLINE=1 — "
                f"or pass --dataset-path DIR (a local copy), or --fixtures for the bundled sample rows."
            ) from None

    # --- what each task defines -----------------------------------------------------------------
    def keep(self, doc) -> bool:
        """Whether a row is a candidate; `doc` holds only `keep_columns`, images undecoded."""
        return True

    def doc_to_text(self, doc) -> str:
        raise NotImplementedError

    def doc_to_visual(self, doc) -> list:
        raise NotImplementedError

    def doc_id(self, doc, index: int) -> str:
        raise NotImplementedError

    def references(self, doc) -> list[str]:
        raise NotImplementedError

    def score_doc(self, doc, answer_text: str) -> float:
        raise NotImplementedError

    # --- the Suite interface --------------------------------------------------------------------
    def num_candidates(self) -> int:
        return len(self.row_indices)

    def doc(self, index: int) -> dict:
        """Candidate `index` as a full row, its images decoded (only this row's)."""
        return self.dataset[self.row_indices[index]]

    def sample(self, index: int) -> Sample:
        doc = self.doc(index)
        images = self.doc_to_visual(doc)
        content = []
        for i, _ in enumerate(images):
            if i:  # lmms-eval's LLaVA joins image tokens with a space; it also keeps their token runs apart
                content.append({"type": "text", "text": " "})
            content.append({"type": "image"})
        content.append({"type": "text", "text": self.doc_to_text(doc)})
        return Sample(self.doc_id(doc, index), [{"role": "user", "content": content}], images,
                      self.references(doc), {"doc": doc})

    def score(self, sample: Sample, answer_text: str) -> float:
        return float(self.score_doc(sample.meta["doc"], answer_text))

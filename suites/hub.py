"""Suites backed by HF datasets: the hub ids lmms-eval uses, a local directory, or our fixtures.

Prompts reproduce lmms-eval's `doc_to_text` with each task's default kwargs; scores reproduce
its `process_results` + aggregation (all four aggregate to the mean of per-sample scores).
The images go first in the user turn (separated by a space), then the text, as lmms-eval's
LLaVA model places them. In long-answer mode the task's short-answer post-prompt is replaced by the papers'
instruction (vispec_bench.plugins.suite.LONG_ANSWER_INSTRUCTION).
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

    def __init__(self, prompt_mode="short", split: str | None = None, path: str | None = None,
                 name: str | None = None, revision: str | None = None, fixtures: bool = False):
        super().__init__(prompt_mode)
        default = self.default_source
        self.source = DatasetSource(path or default.path, name if name is not None else default.name,
                                    split or default.split, revision or default.revision)
        self.fixtures = fixtures
        self.docs = [doc for doc in self._load() if self.keep(doc)]
        if not self.docs:
            raise SuiteDataError(f"{self.name}: no usable rows in {self.describe_source()}")

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
        return len(self.docs)

    def sample(self, index: int) -> Sample:
        doc = self.docs[index]
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

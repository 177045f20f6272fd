"""InstructBLIP (``InstructBlipForConditionalGeneration`` + ``InstructBlipProcessor``).

Checkpoints: ``Salesforce/instructblip-flan-t5-xl`` / ``-xxl``, ``Salesforce/instructblip-vicuna-7b`` /
``-13b``, or a folder saved from them.

Same layout as BLIP-2 (see :mod:`medblip.models.blip2`) with one difference: the *instruction* is
read twice, by the Q-Former (through its own BERT tokenizer, ``qformer_input_ids``, so the queries
extract instruction-relevant visual features) and by the language model as its text prompt, exactly
as ``InstructBlipProcessor`` does. Training masks the instruction out of the labels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medblip.models.blip2 import QFormerCaptioner
from medblip.models.registry import register_family

if TYPE_CHECKING:
    import torch

#: default instruction: asks for the three things the clinical evaluation scores
DEFAULT_INSTRUCTION = (
    "Write a one-sentence radiology caption for this image: the imaging modality, the body region "
    "and the main finding."
)


@register_family("instructblip", model_types=("instructblip",), hub_prefixes=("Salesforce/instructblip-",),
                 aliases=("instruct-blip",))
class InstructBlipCaptioner(QFormerCaptioner):
    """InstructBLIP. Options: ``instruction`` (default :data:`DEFAULT_INSTRUCTION`; a per-call
    ``prompt`` setting overrides it), ``max_length`` (default 128), ``attn_implementation``."""

    model_cls = "InstructBlipForConditionalGeneration"
    processor_cls = "InstructBlipProcessor"
    model_class_name = model_cls
    processor_class_name = processor_cls
    known_options = frozenset({"instruction", "prompt", "max_length", "attn_implementation"})

    def _prompt(self, settings: Any = None) -> str:
        if settings is not None and settings.prompt is not None:
            return settings.prompt.strip()
        text = self.options.get("instruction") or self.options.get("prompt") or DEFAULT_INSTRUCTION
        return str(text).strip()

    @property
    def instruction(self) -> str:
        return self._prompt()

    def _qformer_inputs(self, n: int, prompt: str) -> dict[str, torch.Tensor]:
        qtok = self.processor.qformer_tokenizer
        enc = qtok([prompt] * n, return_tensors="pt", padding=True, truncation=True,
                   max_length=int(self.base_model.config.qformer_config.max_position_embeddings)
                   - self._num_query())
        return {"qformer_input_ids": enc["input_ids"], "qformer_attention_mask": enc["attention_mask"]}

    def _qformer_call_inputs(self, n: int, prompt: str, query: torch.Tensor) -> dict[str, Any]:
        import torch

        q = self._qformer_inputs(n, prompt)
        ids = q["qformer_input_ids"].to(self.device)
        mask = q["qformer_attention_mask"].to(self.device)
        # as in InstructBlipForConditionalGeneration.get_image_features: queries first, then text
        mask = torch.cat([torch.ones(query.shape[:-1], dtype=mask.dtype, device=self.device), mask], dim=1)
        return {"input_ids": ids, "attention_mask": mask}

"""The BEANS-Zero components: what each one asks (task), how long its clips are, and the prompt rule of the original
evaluation. Taken from the official `beans-zero` dataset config (v1.0.0)."""

from dataclasses import dataclass

from processing_naturelm import AUDIO_SPAN, audio_instruction

TASKS = ("classification", "detection", "captioning")

# The original evaluation cut or zero-padded every clip to its component's `max_duration`; components without one
# (the detection sets, cut into windows upstream) used the model's default of 10 s.
DEFAULT_CLIP_SECONDS = 10.0

# For detection components with many labels the original evaluation replaced the dataset's instruction (which lists
# the labels) by this generic question: more than `GENERIC_DETECTION_PROMPT_THRESHOLD` labels, "None" included.
GENERIC_DETECTION_PROMPT = f"{AUDIO_SPAN} What are the common names for the species in the audio, if any?"
GENERIC_DETECTION_PROMPT_THRESHOLD = 8
NO_DETECTION = "None"


@dataclass(frozen=True)
class BeansZeroComponent:
    """
    One BEANS-Zero component (a `dataset_name` value).

    Args:
        name (`str`): the `dataset_name` of its rows, e.g. `"esc50"`.
        task (`str`): `"classification"`, `"detection"` or `"captioning"`; decides post-processing and metrics.
        max_duration (`float`, *optional*): clip length in seconds of the original evaluation; `None` means
            `DEFAULT_CLIP_SECONDS`.
        detection_labels (`tuple[str, ...]`): the label vocabulary of a detection component, which decides whether
            the original evaluation swapped its prompt.
    """

    name: str
    task: str
    max_duration: float | None = None
    detection_labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"Component {self.name!r} has task {self.task!r}; expected one of {TASKS}.")

    @property
    def clip_seconds(self) -> float:
        """Every clip of this component is cut or zero-padded to this many seconds before the model sees it."""
        return float(self.max_duration) if self.max_duration is not None else DEFAULT_CLIP_SECONDS

    @property
    def uses_generic_detection_prompt(self) -> bool:
        """Whether the original evaluation asked `GENERIC_DETECTION_PROMPT` instead of the row's instruction."""
        num_labels = len(set(self.detection_labels) | {NO_DETECTION})
        return self.task == "detection" and num_labels > GENERIC_DETECTION_PROMPT_THRESHOLD


_ENABIRDS = (
    "American Crow", "American Goldfinch", "American Redstart", "American Robin", "Black-and-white Warbler",
    "Black-capped Chickadee", "Blue-gray Gnatcatcher", "Brown-headed Cowbird", "Blue-headed Vireo", "Blue Jay",
    "Black-throated Green Warbler", "Black-throated Blue Warbler", "Carolina Wren", "Common Yellowthroat",
    "Eastern Towhee", "Hermit Thrush", "Hooded Warbler", "Kirtland's Warbler", "Louisiana Waterthrush",
    "Northern Cardinal", "Northern Flicker", "Ovenbird", "Rose-breasted Grosbeak", "Red-bellied Woodpecker",
    "Ruby-crowned Kinglet", "Red-eyed Vireo", "Scarlet Tanager", "Swainson's Thrush", "Tufted Titmouse",
    "White-breasted Nuthatch", "Wild Turkey", "Wood Thrush", "Yellow-billed Cuckoo", "Other Bird",
)
_HICEAS = ("Minke whale", "None")
_RFCX = (
    "Cricket coqui", "Grass coqui", "White-lipped Frog", "Common coqui", "Hedrick's coqui", "Elfin woods warbler",
    "Puerto Rican woodpecker", "Bananaquit", "Locust coqui", "Pearly-eyed thrasher", "Puerto Rican bullfinch",
    "Black-whiskered vireo", "Mountain Coqui", "Puerto Rican owl", "Bronze coqui", "Scaly-naped pigeon",
    "Red-eyed coqui", "Red-legged thrush", "Dwarf coqui", "Puerto Rican lizard cuckoo", "Puerto Rican tody",
    "Melodius coqui", "Puerto Rican tanager", "Puerto Rican spindalis", "None",
)
_GIBBONS = ("Single pulse gibbon call", "Multiple pulse gibbon call", "Gibbon duet", "None")
_DCASE = (
    "American Redstart", "Bay-breasted Warbler", "Black-throated Blue Warbler", "Jackdaw call", "Meerkat close call",
    "Chipping Sparrow", "Common Yellowthroat", "Gray-cheeked Thrush", "Hyena giggle", "Hyena groan and moo",
    "Ovenbird", "Other Animal", "Rose-breasted Grosbeak", "Savannah Sparrow", "Meerkat short note", "Hyena squitter",
    "Swainson's Thrush", "White-throated Sparrow",
)

_ALL = (
    BeansZeroComponent("esc50", "classification", 5),
    BeansZeroComponent("watkins", "classification", 3),
    BeansZeroComponent("cbi", "classification", 10),
    BeansZeroComponent("humbugdb", "classification", 3),
    BeansZeroComponent("enabirds", "detection", None, _ENABIRDS),
    BeansZeroComponent("hiceas", "detection", None, _HICEAS),
    BeansZeroComponent("rfcx", "detection", None, _RFCX),
    BeansZeroComponent("gibbons", "detection", None, _GIBBONS),
    BeansZeroComponent("dcase", "detection", None, _DCASE),
    BeansZeroComponent("lifestage", "classification", 10),
    BeansZeroComponent("call-type", "classification", 10),
    *(
        BeansZeroComponent(f"unseen-{level}-{naming}", "classification", 10)
        for level in ("species", "genus", "family")
        for naming in ("cmn", "sci", "tax")
    ),
    BeansZeroComponent("captioning", "captioning", 10),
    BeansZeroComponent("zf-indiv", "classification", 10),
)

# In the official order, which is also the order of every report.
COMPONENTS: dict[str, BeansZeroComponent] = {component.name: component for component in _ALL}


def get_component(name: str) -> BeansZeroComponent:
    """The component called `name`; a `KeyError` naming the known components otherwise."""
    try:
        return COMPONENTS[name]
    except (KeyError, TypeError):
        raise KeyError(f"Unknown BEANS-Zero component {name!r}; known: {', '.join(COMPONENTS)}.") from None


def instruction_for(component: BeansZeroComponent, instruction: str) -> str:
    """
    The instruction the original evaluation sent for a row: the generic detection question for detection components
    with many labels, otherwise the row's own instruction; stripped, with `<Audio><AudioHere></Audio> ` put in front
    when it has no audio placeholder.
    """
    if component.uses_generic_detection_prompt:
        instruction = GENERIC_DETECTION_PROMPT
    return audio_instruction(instruction)


__all__ = [
    "COMPONENTS",
    "DEFAULT_CLIP_SECONDS",
    "GENERIC_DETECTION_PROMPT",
    "GENERIC_DETECTION_PROMPT_THRESHOLD",
    "NO_DETECTION",
    "TASKS",
    "BeansZeroComponent",
    "get_component",
    "instruction_for",
]

"""A small joke corpus, repeated so a tiny model can learn it within a few epochs."""

JOKES = [
    "A pair of jumper cables walks into a bar. The bartender says: I'll serve you, "
    "but don't start anything.",
    "Why did the scarecrow win an award? Because he was outstanding in his field.",
    "I told my wife she was drawing her eyebrows too high. She looked surprised.",
    "Why don't skeletons fight each other? They don't have the guts.",
    "What do you call a fake noodle? An impasta.",
    "Why did the bicycle fall over? Because it was two tired.",
]


def corpus_text(repeat: int = 30) -> str:
    return "\n".join(JOKES * repeat) + "\n"

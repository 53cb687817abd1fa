"""Prompts shared by the generation tests: varied lengths, so batches pad and rows finish at different steps."""

PROMPTS = [
    "Summarize: #Person1#: Hi, how are you? #Person2#: Fine, thanks.",
    "Hello",
    "A much longer prompt about the weather, the train timetable, and a dinner reservation for four people.",
    "Two words",
    "What is the capital of France? Answer briefly and then stop talking about it.",
    "#Person1#: Can I pay by card? #Person2#: Yes, of course.",
    "One more",
]

"""MQTT topic names and filters: what is valid, and which filters a topic matches.

Levels are separated by `/`. In a filter `+` stands for exactly one level and `#`, which must be
the last level, for the parent level and any number of levels below it. A filter that starts
with a wildcard matches no topic that starts with `$` (the broker's own topics, MQTT 5 4.7.2).
"""

from __future__ import annotations


class TopicError(ValueError):
    """A topic name or filter that MQTT does not allow."""


def check_topic(topic: str) -> str:
    """`topic` if it is a valid topic name to publish to (non-empty, no wildcards, no NUL)."""
    if not topic or "\0" in topic:
        raise TopicError(f"topic {topic!r}: empty or contains NUL")
    if "+" in topic or "#" in topic:
        raise TopicError(f"topic {topic!r}: wildcards are for subscriptions only")
    return topic


def check_filter(topic_filter: str) -> str:
    """`topic_filter` if it is a valid subscription filter."""
    if not topic_filter or "\0" in topic_filter:
        raise TopicError(f"filter {topic_filter!r}: empty or contains NUL")
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise TopicError(f"filter {topic_filter!r}: '#' must be a whole level, the last one")
        if "+" in level and level != "+":
            raise TopicError(f"filter {topic_filter!r}: '+' must be a whole level")
    return topic_filter


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether a message published to `topic` reaches a subscription to `topic_filter`."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    want = topic_filter.split("/")
    have = topic.split("/")
    for i, level in enumerate(want):
        if level == "#":
            return True  # "a/#" matches "a" too: the parent level
        if i >= len(have) or (level != "+" and level != have[i]):
            return False
    return len(want) == len(have)

"""English function words: they carry no evidence when matching an answer against its context.

Text is compared after ``candor.prompts.normalize_text`` (lower-case, punctuation
to spaces, apostrophes split: hence the lone ``s``). Each caller adds the words
its own check must also ignore.
"""

from __future__ import annotations

# fmt: off
FUNCTION_WORDS = frozenset([
    "a", "an", "the", "of", "in", "on", "at", "to", "for", "from", "by", "with", "and", "or", "but", "is", "are",
    "was", "were", "be", "been", "being", "it", "its", "this", "that", "these", "those", "as", "into", "than",
    "then", "there", "their", "they", "he", "she", "his", "her", "him", "them", "we", "you", "your", "our", "i",
    "me", "my", "not", "no", "do", "does", "did", "has", "have", "had", "which", "who", "whom", "what", "when",
    "where", "why", "how", "about", "over", "under", "so", "such", "can", "could", "would", "should", "may",
    "might", "will", "shall", "s",
])
# fmt: on

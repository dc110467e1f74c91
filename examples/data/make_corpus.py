"""Writes corpus.txt: a few hundred KB of English-like text for the example model to train on.

Self-written: a handful of hand-written paragraphs (HAND_WRITTEN below) followed by text from a
small seeded random grammar (the word lists below). No download, no third-party text; running it
again reproduces corpus.txt byte for byte.

    python examples/data/make_corpus.py            # writes examples/data/corpus.txt
"""

from __future__ import annotations

import random
from pathlib import Path

HAND_WRITTEN = """\
The lighthouse keeper kept two notebooks. In the first she wrote the weather every four hours:
wind, cloud, the height of the swell and the colour of the water at noon. In the second she
wrote whatever the first could not hold, which was most things. The supply boat came on the
first Tuesday of each month, and on those days she wrote nothing at all.

A small model learns the way a child learns a tune it has heard through a wall. First the
rhythm, then the common notes, and only much later the words. If you stop it early it will
hum something that sounds right from the next room and makes no sense up close.

The river changed its course in the spring of the flood year. Old maps still show the bend
below the mill, but the water now runs straight past the orchard and the bend is a long
meadow where the grass grows greener than anywhere else in the valley.

Measure twice, the carpenter said, and then he measured three times, because the first two
measurements disagreed. Nobody remembers what he was building. Everybody remembers the rule.

When the train was late the station master would step out onto the platform, look down the
line, look at his watch, and go back inside. He did this every ten minutes. It never made the
train come sooner, but the passengers said it made the waiting easier to bear.

There is a kind of quiet that only happens after snow. The roads are empty, the birds are
somewhere else, and every sound seems to arrive from further away than it should. Children
know it best; they are the ones who run outside to break it.

The recipe called for a pinch of salt, a handful of flour and a good deal of patience. The
cook had plenty of salt and flour. She added the patience last, as the recipe said, and the
bread was better for it.

Every library has a shelf that nobody visits. On it are the books that were ordered by someone
who has since left, on subjects that were briefly important. Now and then a student finds it by
accident and spends the whole afternoon there, and leaves knowing something nobody asked about.

"""

NAMES = """Ada Basil Clara Dorian Edith Felix Greta Hugo Iris Jonas Kira Leon Mara Nils Olga Pavel
Quinn Rosa Silas Tilda Ulric Vera Walter Xenia Yusuf Zora Anton Bianca Cyril Delia Emil Flora
Gideon Helga Ivo Juno Kasimir Lotte Milo Nadia Oskar Petra Ruben Sabine Theo Ursula Viktor Wanda""".split()
PLACES = """the harbour|the old mill|the market square|the north road|the orchard|the station|the
library|the bakery|the hill farm|the river bank|the ferry landing|the chapel|the school|the
bridge|the lighthouse|the forest edge|the salt marsh|the quarry|the vineyard|the boat yard|the
town hall|the weir|the meadow|the signal box|the observatory|the greenhouse|the workshop|the
inn|the pier|the clock tower""".replace("\n", " ").split("|")
PLACES = [p.strip() for p in PLACES]
NOUNS = """lamp kettle letter ladder basket window garden fence wagon lantern compass map ribbon
candle violin hammer barrel rope saddle bucket blanket mirror notebook pencil umbrella chair
table door gate field stone shell feather bottle cup plate coat boot hat scarf glove clock bell
drum flute kite net sail oar anchor wheel cart plough sickle spade rake barn loft cellar attic
stair chimney roof tile brick beam nail thread needle button pocket purse coin key lock chest
box crate sack jar jug bowl spoon knife loaf cheese apple pear plum cherry onion turnip carrot
cabbage bean pea herb rose tulip daisy thistle fern moss oak birch willow maple pine cedar elm
hawk owl crow sparrow heron swan goose duck hen cow horse goat sheep dog cat fox hare badger""".split()
ADJECTIVES = """old new small large quiet noisy bright dark warm cold wet dry heavy light narrow wide
crooked straight smooth rough soft hard early late careful careless patient restless gentle
stern clever foolish silver golden wooden iron copper painted faded broken mended empty full
hidden open distant nearby tall short round square young ancient rusty polished dusty clean
muddy sunny windy foggy frosty tired eager shy proud humble curious honest ordinary strange""".split()
VERBS = """carried:carries found:finds mended:mends painted:paints lifted:lifts opened:opens
closed:closes cleaned:cleans counted:counts measured:measures weighed:weighs sold:sells
bought:buys borrowed:borrows returned:returns hid:hides watched:watches followed:follows
pushed:pushes pulled:pulls dropped:drops caught:catches threw:throws built:builds sketched:sketches
wrapped:wraps fed:feeds visited:visits repaired:repairs polished:polishes packed:packs
loaded:loads chose:chooses remembered:remembers forgot:forgets admired:admires""".split()
INTRANSITIVE = """waited:waits laughed:laughs slept:sleeps sang:sings wandered:wanders hurried:hurries
paused:pauses listened:listens whistled:whistles shivered:shivers rested:rests stumbled:stumbles
returned:returns smiled:smiles frowned:frowns""".split()
ADVERBS = """slowly quickly quietly carefully suddenly gladly rarely often twice again early late
briefly patiently loudly softly eagerly calmly""".split()
TIMES = """in the morning|at noon|before dawn|after supper|on Sunday|in the spring|that winter|on
market day|during the storm|at dusk|the next day|every evening|once a week|long ago|last autumn|
at midnight""".replace("\n", " ").split("|")
TIMES = [t.strip() for t in TIMES]
PREPS = "near beside behind under above inside across along past beyond".split()
LINKS = ["and", "but", "so", "while", "because", "although", "until", "after", "before", "when"]


class Grammar:
    """A tiny seeded random grammar: noun phrases, verb phrases, clauses, sentences, paragraphs."""

    def __init__(self, seed: int):
        self.r = random.Random(seed)

    def pick(self, items):
        return self.r.choice(items)

    def noun_phrase(self) -> str:
        roll = self.r.random()
        if roll < 0.2:
            return self.pick(NAMES)
        det = self.pick(["the", "a", "her", "his", "their", "one", "that", "every"])
        adjs = " ".join(self.pick(ADJECTIVES) for _ in range(self.r.choice([0, 1, 1, 2])))
        phrase = " ".join(filter(None, [det, adjs, self.pick(NOUNS)]))
        if det == "a" and phrase[2] in "aeiou":
            phrase = "an" + phrase[1:]
        if self.r.random() < 0.2:
            phrase += f" {self.pick(PREPS)} {self.pick(PLACES)}"
        return phrase

    def clause(self, tense: int) -> str:
        subject = self.noun_phrase()
        if self.r.random() < 0.3:
            verb = self.pick(INTRANSITIVE).split(":")[tense]
            tail = self.r.choice(["", f" {self.pick(ADVERBS)}", f" {self.pick(PREPS)} {self.pick(PLACES)}"])
            return f"{subject} {verb}{tail}"
        verb = self.pick(VERBS).split(":")[tense]
        tail = self.r.choice(["", "", f" {self.pick(ADVERBS)}", f" {self.pick(TIMES)}", f" to {self.pick(PLACES)}"])
        return f"{subject} {verb} {self.noun_phrase()}{tail}"

    def sentence(self) -> str:
        tense = 0 if self.r.random() < 0.8 else 1
        text = self.clause(tense)
        if self.r.random() < 0.4:
            text += f" {self.pick(LINKS)} {self.clause(tense)}"
        if self.r.random() < 0.25:
            text = f"{self.pick(TIMES)}, {text}"
        if self.r.random() < 0.08:
            text += f", and it cost {self.r.randint(2, 99)} pence"
        end = self.r.choices([".", "!", "?", "; "], [85, 5, 5, 5])[0]
        return text[0].upper() + text[1:] + (end if end != "; " else ".")

    def paragraph(self) -> str:
        return " ".join(self.sentence() for _ in range(self.r.randint(3, 8)))


def corpus(size: int = 320_000, seed: int = 2024) -> str:
    grammar, parts, total = Grammar(seed), [HAND_WRITTEN], len(HAND_WRITTEN)
    chapter = 1
    while total < size:
        if grammar.r.random() < 0.05:
            parts.append(f"Chapter {chapter}\n\n")
            chapter += 1
        text = grammar.paragraph() + "\n\n"
        parts.append(text)
        total += len(text)
    return "".join(parts)


if __name__ == "__main__":
    out = Path(__file__).with_name("corpus.txt")
    out.write_text(corpus(), encoding="ascii")
    print(f"wrote {out} ({out.stat().st_size} bytes)")

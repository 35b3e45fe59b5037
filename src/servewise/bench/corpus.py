"""The default text that synthetic prompts are cut from, when no ``--corpus`` is given.

Ordinary English prose on everyday subjects, written for this project, so that
prompts tokenize like real requests (common words, punctuation, numbers) rather
than like repeated filler. Pass ``--corpus`` (a text file or any supported
dataset) for domain text.
"""

from __future__ import annotations

from servewise.bench.datasets import dataset_text

BUILTIN_CORPUS = """\
The morning train to the coast leaves at seven, and by half past six the platform is already full.
Commuters stand in loose groups, holding paper cups of coffee and reading the news on their phones.
A conductor walks the length of the train, checking that every door closes properly, while a boy
with a red backpack counts the carriages out loud: one, two, three, all the way to eleven.

Bread is one of the oldest prepared foods. To bake a simple loaf, mix 500 grams of flour with 350
grams of warm water, 10 grams of salt and a small spoon of yeast. Knead the dough for ten minutes,
until it feels smooth and springs back when pressed. Let it rise in a covered bowl for about two
hours, shape it gently, and bake it at 230 degrees Celsius for forty minutes. The crust should
sound hollow when tapped on the bottom.

When you plan a garden, start with the light. Most vegetables need at least six hours of direct sun
each day, while lettuce, spinach and many herbs tolerate partial shade. Test the soil before you
plant: a cheap kit will tell you whether it is acidic or alkaline, and whether it lacks nitrogen.
Compost improves almost any soil, because it holds water in sandy ground and loosens heavy clay.

A good email asks for one thing and makes it easy to say yes. Put the request in the first two
sentences, give the deadline plainly, and attach whatever the reader needs to act without writing
back. If the message is long, add a short summary at the top. Before sending, read it once as the
person receiving it would, tired and in a hurry, and cut every sentence that does not help them.

The city library reopened last spring after two years of repairs. The old reading room kept its
tall windows and wooden tables, but the basement now holds a workshop with sewing machines, a 3D
printer and a small recording studio. On Saturday mornings volunteers teach children to repair
bicycles, and on Thursday evenings a retired engineer explains how radios work.

Why does the sky look blue? Sunlight contains every colour, but as it passes through the air, short
blue wavelengths scatter off gas molecules far more than long red ones. We therefore see blue light
coming from every direction of the sky. At sunset the light crosses much more air before reaching
us, most of the blue is scattered away, and the remaining reds and oranges colour the clouds.

To change a flat tyre, park on firm, level ground and switch on the hazard lights. Loosen the wheel
nuts a quarter turn before lifting the car, then raise it with the jack at the point shown in the
manual. Remove the nuts, swap the wheel, and tighten the nuts in a star pattern so the wheel seats
evenly. Lower the car, tighten them fully, and check the pressure of the spare as soon as you can.

Meetings fail for predictable reasons: nobody knows why they are there, the discussion wanders, and
decisions are never written down. A short agenda sent the day before fixes the first problem. A
person who keeps time fixes the second. The third is solved by ending every meeting with a list of
who will do what, and by when, shared with everyone who attended and everyone who should have.

In 1969 two astronauts walked on the Moon while a third orbited above them, alone for nearly a day
each time his craft passed behind the far side and lost contact with Earth. Years later he said he
never felt lonely; he felt awareness, anticipation and satisfaction. The computer that guided their
landing had less memory than a modern greeting card that plays a song when opened.

Learning a language as an adult takes patience more than talent. Twenty minutes every day beats
three hours once a week, because memory depends on spaced repetition. Listen to slow podcasts,
read children's books, and speak aloud even when nobody is there to hear you. Mistakes are not a
sign of failure; they are the moments when the brain notices a rule it has not yet learned.

The river floods almost every spring. Farmers along its banks have learned to plant late, after the
water withdraws and leaves behind a thin layer of dark, fertile silt. Older houses stand on stone
foundations a metre above the fields, and many families keep a small boat tied behind the barn,
just in case. The town hall records the highest water mark of each year on a painted post.

Before you buy a used laptop, ask how old the battery is and whether it still holds a charge for a
working day. Check every port with a cable you trust, run the keyboard through a typing test, and
look at the screen on a plain white page to spot dead pixels. Finally, reset the machine to its
factory settings in front of the seller, so you know it is not locked to someone else's account.
"""


def load_corpus(path: str | None) -> str:
    """The text of ``path`` (plain text, or any dataset format the bench reads), else the built-in one."""
    if path is None:
        return BUILTIN_CORPUS
    return dataset_text(path)

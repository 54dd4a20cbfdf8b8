"""A small synthetic e-commerce dataset: catalog, graded queries and user histories.

The files have the schema of ``/work/shared/data/*/README.md`` (products as in ESCI, labels with
ESCI grades 3 E / 2 S / 1 C / 0 I, interactions as in "scientific"), so the demo and the tests
exercise the same code paths as the real datasets. Everything is deterministic for a seed.

CLI: ``python -m trainer.data.synthetic --out DIR [--items N] [--queries N] [--users N] [--seed S]``
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer.io import atomic_path

logger = logging.getLogger(__name__)

_ESCI_LABELS = {3: "E", 2: "S", 1: "C", 0: "I"}
# Independent random streams, so e.g. changing the number of users leaves the catalog alone.
_STREAM_CATALOG, _STREAM_QUERIES, _STREAM_USERS, _STREAM_SPLIT = 1, 2, 3, 4


@dataclass(frozen=True)
class _ProductType:
    """One leaf of the taxonomy and the attribute values its products draw from."""

    path: str  # "Home > Furniture > Sofas"
    noun: str  # as in titles: "Sofa"
    synonyms: tuple[str, ...]  # lower-case paraphrases used in queries: "couch"
    styles: tuple[str, ...]
    materials: tuple[str, ...]
    sizes: tuple[str, ...]
    colors: tuple[str, ...]
    price: float  # median USD
    features: tuple[str, ...]
    complements: tuple[str, ...] = ()  # leaf names in the same top category

    @property
    def top(self) -> str:
        return self.path.split(" > ")[0]

    @property
    def leaf(self) -> str:
        return self.path.split(" > ")[-1]


_NEUTRAL = ("Black", "White", "Grey", "Beige", "Brown")
_BRIGHT = ("Black", "White", "Red", "Blue", "Green", "Navy Blue", "Pink", "Yellow")
_DEVICE = ("Black", "White", "Silver", "Space Grey", "Blue", "Rose Gold")
_WOOD = ("Natural", "Walnut Brown", "Espresso", "White", "Black")

_BRANDS = {
    "Home": ("Acme", "Hearthwell", "Oakline", "Casa Lumen", "Nestwood", "Velora"),
    "Kitchen": ("Ironforge", "Copperleaf", "Saltbox", "Kitchara", "Mesa Cook"),
    "Electronics": ("Voltra", "Sonique", "Pixelon", "Auralink", "Nexiq"),
    "Clothing": ("Trailwind", "Northloom", "Stridewell", "Urbana Co.", "Kestrel"),
    "Sports & Outdoors": ("Summitra", "Peakform", "Ridgeback", "Flowfit", "Basecamp Co."),
    "Tools & Home Improvement": ("Torqmax", "Buildrite", "Stoneworth", "Forgeline", "Graniteway"),
    "Beauty & Personal Care": ("Lumiere Lab", "Silkara", "Purebloom", "Glowell", "Verdant"),
    "Toys & Games": ("Brickbee", "Wondertoy", "Jigsy", "Playnook", "Tumbletown"),
    "Pet Supplies": ("Pawsome", "Furbridge", "Tailwag Co.", "Whiskerly", "Barkley & Co."),
    "Office Products": ("Deskcraft", "Inkwell", "Paperlane", "Ergolux", "Officio"),
}

_T = _ProductType
# fmt: off
_TYPES: tuple[_ProductType, ...] = (
    # Home
    _T("Home > Furniture > Sofas", "Sofa", ("couch", "settee"),
       ("3-Seat", "Loveseat", "Sleeper", "Mid-Century"),
       ("Velvet", "Leather", "Linen", "Microfiber"),
       ("72 inch", "84 inch", "96 inch"), ("Red", "Grey", "Navy Blue", "Beige", "Green", "Black"),
       650, ("Solid hardwood frame", "High-density foam cushions", "Removable, washable covers",
             "Assembles in under 30 minutes"), ("Coffee Tables", "Throw Pillows")),
    _T("Home > Furniture > Coffee Tables", "Coffee Table", ("cocktail table", "center table"),
       ("Round", "Rectangular", "Lift-Top", "Nesting"), ("Oak", "Walnut", "Glass", "Marble"),
       ("36 inch", "42 inch", "48 inch"), _WOOD, 180,
       ("Scratch-resistant top", "Hidden storage shelf", "Tool-free assembly"), ("Sofas",)),
    _T("Home > Decor > Throw Pillows", "Throw Pillow", ("cushion", "accent pillow"),
       ("Decorative", "Boho", "Striped", "Textured"), ("Cotton", "Velvet", "Linen", "Faux Fur"),
       ("18 x 18 inch", "20 x 20 inch", "12 x 20 inch"), _BRIGHT, 25,
       ("Hidden zipper", "Soft polyester insert included", "Machine washable cover"),
       ("Sofas", "Comforters")),
    _T("Home > Bedding > Comforters", "Comforter", ("duvet", "quilt"),
       ("All-Season", "Lightweight", "Down Alternative"), ("Cotton", "Microfiber", "Bamboo"),
       ("Twin", "Queen", "King"), _NEUTRAL, 70,
       ("Box-stitched to keep the fill in place", "Corner loops for a duvet cover",
        "Hypoallergenic fill"), ("Throw Pillows",)),
    _T("Home > Lighting > Table Lamps", "Table Lamp", ("bedside lamp", "desk light"),
       ("Modern", "Farmhouse", "Touch Control"), ("Ceramic", "Brass", "Glass", "Wood"),
       ("19 inch", "24 inch", "28 inch"), _NEUTRAL, 45,
       ("Linen drum shade", "USB charging port in the base", "Three-way dimmable switch"),
       ("Coffee Tables",)),
    # Kitchen
    _T("Kitchen > Cookware > Skillets", "Skillet", ("frying pan", "fry pan"),
       ("Pre-Seasoned", "Nonstick", "Tri-Ply"),
       ("Cast Iron", "Stainless Steel", "Carbon Steel", "Ceramic"),
       ("8 inch", "10 inch", "12 inch"), ("Black", "Silver", "Red", "Blue"), 35,
       ("Oven safe to 500 F", "Works on induction, gas and electric", "Even heat distribution"),
       ("Spatulas", "Cutting Boards")),
    _T("Kitchen > Utensils > Spatulas", "Spatula", ("turner", "flipper"),
       ("Slotted", "Fish", "Flexible"), ("Silicone", "Stainless Steel", "Wood", "Nylon"),
       ("11 inch", "13 inch"), ("Black", "Red", "Grey", "Teal"), 12,
       ("Heat resistant to 600 F", "Safe for nonstick pans", "Dishwasher safe"), ("Skillets",)),
    _T("Kitchen > Utensils > Cutting Boards", "Cutting Board", ("chopping board", "chopping block"),
       ("Reversible", "Juice Groove", "End Grain"), ("Bamboo", "Acacia Wood", "Plastic", "Maple"),
       ("12 x 8 inch", "17 x 12 inch", "24 x 18 inch"), ("Natural", "White", "Grey"), 28,
       ("Non-slip rubber feet", "Deep juice groove", "Easy-grip handles"),
       ("Chef Knives", "Skillets")),
    _T("Kitchen > Cutlery > Chef Knives", "Chef Knife", ("cook's knife", "kitchen knife"),
       ("Japanese", "German", "Forged"),
       ("Damascus Steel", "High-Carbon Stainless Steel", "Ceramic"),
       ("6 inch", "8 inch", "10 inch"), ("Black", "Silver", "Wood Brown"), 45,
       ("Razor-sharp 15 degree edge", "Full tang, triple-riveted handle", "Gift box included"),
       ("Cutting Boards",)),
    _T("Kitchen > Small Appliances > Coffee Makers", "Coffee Maker",
       ("coffee machine", "coffee brewer"), ("Drip", "Single-Serve", "Programmable"),
       ("Stainless Steel", "Plastic", "Glass"), ("4 cup", "8 cup", "12 cup"),
       ("Black", "Silver", "White", "Red"), 60,
       ("Brew-strength control", "Keep-warm plate with auto shut-off", "Reusable filter"),
       ("Storage Containers",)),
    _T("Kitchen > Food Storage > Storage Containers", "Food Storage Container Set",
       ("meal prep containers", "food containers"), ("Airtight", "Stackable", "Leak-Proof"),
       ("Glass", "BPA-Free Plastic", "Stainless Steel"), ("10 piece", "18 piece", "24 piece"),
       ("Clear", "Blue", "Grey", "Green"), 28,
       ("Microwave, freezer and dishwasher safe", "Snap-lock lids", "Nests to save space"),
       ("Coffee Makers",)),
    # Electronics
    _T("Electronics > Audio > Headphones", "Headphones", ("earphones", "headset"),
       ("Wireless Over-Ear", "Noise Cancelling", "On-Ear", "Studio"), (), (), _DEVICE, 80,
       ("40-hour battery life", "Bluetooth 5.3 with multipoint", "Foldable with carrying case"),
       ("Charging Cables", "Bluetooth Speakers")),
    _T("Electronics > Audio > Bluetooth Speakers", "Bluetooth Speaker",
       ("wireless speaker", "portable speaker"), ("Waterproof", "Portable", "Smart"), (),
       ("10W", "20W", "40W"), _DEVICE, 50,
       ("IP67 waterproof and dustproof", "Pairs two speakers for stereo", "12-hour playtime"),
       ("Charging Cables", "Headphones")),
    _T("Electronics > Computers > Monitors", "Monitor", ("computer screen", "display"),
       ("4K", "Curved", "IPS", "Gaming"), (), ("24 inch", "27 inch", "32 inch"),
       ("Black", "White", "Silver"), 250,
       ("Adjustable height and tilt stand", "HDMI and DisplayPort inputs", "Eye-care flicker-free"),
       ("Charging Cables",)),
    _T("Electronics > Accessories > Charging Cables", "Charging Cable",
       ("charger cord", "usb cable"), ("USB-C", "Lightning", "USB-C to USB-C"),
       ("Nylon Braided", "PVC", "Silicone"), ("3 ft", "6 ft", "10 ft"), _DEVICE, 12,
       ("Fast charging up to 60W", "Tested for 20,000 bends", "Data transfer up to 480 Mbps"),
       ("Headphones", "Monitors")),
    _T("Electronics > Wearables > Smartwatches", "Smartwatch", ("fitness watch", "smart watch"),
       ("GPS", "Fitness Tracker", "Rugged"), ("Aluminum", "Stainless Steel", "Titanium"),
       ("41mm", "45mm"), _DEVICE, 200,
       ("Heart-rate and sleep tracking", "7-day battery", "Water resistant to 50 m"),
       ("Charging Cables",)),
    # Clothing
    _T("Clothing > Shoes > Running Shoes", "Running Shoes",
       ("sneakers", "trainers", "jogging shoes"), ("Lightweight", "Trail", "Cushioned"),
       ("Mesh", "Knit"), ("Size 8", "Size 9", "Size 10", "Size 11"), _BRIGHT, 90,
       ("Breathable upper", "Responsive foam midsole", "Grippy rubber outsole"),
       ("Athletic Socks",)),
    _T("Clothing > Outerwear > Rain Jackets", "Rain Jacket", ("raincoat", "waterproof jacket"),
       ("Packable", "Hooded", "Lightweight"), ("Nylon", "Polyester", "Ripstop"),
       ("Small", "Medium", "Large", "X-Large"), _BRIGHT, 70,
       ("Fully taped seams", "Packs into its own pocket", "Adjustable hood and cuffs"),
       ("T-Shirts",)),
    _T("Clothing > Tops > T-Shirts", "T-Shirt", ("tee", "tshirt"),
       ("Crew Neck", "V-Neck", "Graphic"), ("Cotton", "Organic Cotton", "Polyester Blend"),
       ("Small", "Medium", "Large", "X-Large"), _BRIGHT, 18,
       ("Pre-shrunk", "Tag-free collar", "Relaxed fit"), ("Rain Jackets",)),
    _T("Clothing > Accessories > Athletic Socks", "Athletic Socks", ("sport socks", "gym socks"),
       ("Crew", "No-Show", "Ankle"), ("Cotton", "Merino Wool", "Polyester"),
       ("6-Pack", "12-Pack"), _NEUTRAL, 16,
       ("Cushioned sole", "Arch support", "Moisture-wicking"), ("Running Shoes",)),
    # Sports & Outdoors
    _T("Sports & Outdoors > Fitness > Yoga Mats", "Yoga Mat", ("exercise mat", "workout mat"),
       ("Non-Slip", "Extra Thick", "Travel"), ("TPE", "PVC", "Natural Rubber", "Cork"),
       ("4mm", "6mm", "10mm"), _BRIGHT, 30,
       ("Carrying strap included", "Textured non-slip surface", "Free of latex and phthalates"),
       ("Dumbbells", "Water Bottles")),
    _T("Sports & Outdoors > Fitness > Dumbbells", "Dumbbell Set", ("hand weights", "free weights"),
       ("Adjustable", "Hex", "Neoprene"), ("Cast Iron", "Rubber-Coated Steel", "Vinyl"),
       ("5 lb", "10 lb", "25 lb", "50 lb"), ("Black", "Grey", "Pink", "Blue"), 60,
       ("Knurled ergonomic handles", "Won't roll away", "Storage rack included"), ("Yoga Mats",)),
    _T("Sports & Outdoors > Camping > Tents", "Tent", ("camping shelter", "camp tent"),
       ("Dome", "Backpacking", "Instant Cabin"), ("Polyester", "Nylon Ripstop", "Canvas"),
       ("2-Person", "4-Person", "6-Person"), ("Green", "Orange", "Grey", "Blue"), 120,
       ("Sets up in 60 seconds", "Rainfly with taped seams", "Mesh windows for airflow"),
       ("Sleeping Bags",)),
    _T("Sports & Outdoors > Camping > Sleeping Bags", "Sleeping Bag", ("sleep sack", "bedroll"),
       ("Mummy", "Rectangular", "Ultralight"), ("Down", "Synthetic Fill"),
       ("20 degree", "30 degree", "40 degree"), ("Green", "Orange", "Blue", "Black"), 70,
       ("Compression sack included", "Two-way zipper", "Water-resistant shell"), ("Tents",)),
    _T("Sports & Outdoors > Hydration > Water Bottles", "Water Bottle",
       ("drink bottle", "flask"), ("Insulated", "Leak-Proof", "Sports"),
       ("Stainless Steel", "Tritan Plastic", "Glass"), ("18 oz", "24 oz", "32 oz", "40 oz"),
       _BRIGHT, 22, ("Keeps drinks cold 24 hours", "BPA-free lid", "Fits most cup holders"),
       ("Yoga Mats",)),
    # Tools & Home Improvement
    _T("Tools & Home Improvement > Power Tools > Cordless Drills", "Cordless Drill",
       ("power drill", "drill driver"), ("Brushless", "Compact", "Hammer"), (),
       ("12V", "18V", "20V"), ("Yellow", "Red", "Blue", "Black"), 110,
       ("Two batteries and charger included", "LED work light", "Half-inch keyless chuck"),
       ("Drill Bits",)),
    _T("Tools & Home Improvement > Power Tools > Drill Bits", "Drill Bit Set",
       ("drill bits", "bit set"), ("Titanium-Coated", "Masonry", "Wood Boring"),
       ("High-Speed Steel", "Cobalt", "Carbide"), ("21 piece", "29 piece", "100 piece"),
       ("Gold", "Silver", "Black"), 25,
       ("Split-point tips start without walking", "Hard storage case", "Quick-change shanks"),
       ("Cordless Drills",)),
    _T("Tools & Home Improvement > Hand Tools > Hammers", "Hammer", ("nail hammer", "mallet"),
       ("Claw", "Framing", "Rubber"), ("Fiberglass", "Steel", "Hickory"),
       ("16 oz", "20 oz", "22 oz"), ("Yellow", "Red", "Black"), 22,
       ("Anti-vibration grip", "Magnetic nail starter", "Forged one-piece head"),
       ("Cordless Drills",)),
    _T("Tools & Home Improvement > Paint > Interior Paint", "Interior Paint",
       ("wall paint", "house paint"), ("Eggshell", "Matte", "Semi-Gloss", "Satin"),
       ("Acrylic Latex",), ("1 qt", "1 gal", "5 gal"),
       ("White", "Grey", "Beige", "Blue", "Green"), 40,
       ("Paint and primer in one", "Low odor, zero VOC", "One-coat coverage"), ("Paint Rollers",)),
    _T("Tools & Home Improvement > Paint > Paint Rollers", "Paint Roller Kit",
       ("roller set", "paint roller"), ("9 inch", "Mini", "Extension Pole"),
       ("Microfiber", "Foam", "Woven"), ("5 piece", "10 piece"), ("Blue", "Grey", "White"), 18,
       ("Tray and liners included", "Lint-free covers", "Fits standard extension poles"),
       ("Interior Paint",)),
    # Beauty & Personal Care
    _T("Beauty & Personal Care > Hair Care > Hair Dryers", "Hair Dryer",
       ("blow dryer", "hairdryer"), ("Ionic", "Travel", "Professional"),
       ("Ceramic", "Tourmaline"), ("1600W", "1875W", "2000W"),
       ("Black", "Pink", "White", "Rose Gold"), 45,
       ("Three heat and two speed settings", "Concentrator and diffuser included",
        "Cool-shot button"), ("Hair Brushes",)),
    _T("Beauty & Personal Care > Hair Care > Hair Brushes", "Hair Brush",
       ("hairbrush", "detangling brush"), ("Paddle", "Round", "Detangling"),
       ("Boar Bristle", "Nylon", "Bamboo"), ("Small", "Large"), ("Black", "Pink", "Natural"), 14,
       ("Gentle on wet hair", "Cushioned base", "Anti-static"), ("Hair Dryers",)),
    _T("Beauty & Personal Care > Skin Care > Moisturizers", "Face Moisturizer",
       ("face cream", "facial lotion"), ("Oil-Free", "Hydrating", "SPF 30"), (),
       ("1.7 oz", "2.5 oz", "4 oz"), (), 24,
       ("With hyaluronic acid", "Fragrance free", "Dermatologist tested"), ("Electric Shavers",)),
    _T("Beauty & Personal Care > Shaving > Electric Shavers", "Electric Shaver",
       ("electric razor", "shaver"), ("Rotary", "Foil", "Wet & Dry"), (), (),
       ("Black", "Silver", "Blue"), 70,
       ("60-minute cordless runtime", "Pop-up trimmer", "Waterproof for shower use"),
       ("Moisturizers",)),
    # Toys & Games
    _T("Toys & Games > Building Toys > Building Block Sets", "Building Block Set",
       ("construction toy", "brick set"), ("Classic", "Creative", "Castle"),
       ("ABS Plastic", "Wood"), ("300 pieces", "500 pieces", "1000 pieces"),
       ("Multicolor",), 35,
       ("Compatible with major brands", "Idea booklet included", "Ages 6 and up"),
       ("Board Games",)),
    _T("Toys & Games > Puzzles > Jigsaw Puzzles", "Jigsaw Puzzle", ("puzzle", "picture puzzle"),
       ("Landscape", "Animal", "World Map"), ("Cardboard", "Wood"),
       ("500 piece", "1000 piece", "2000 piece"), ("Multicolor",), 18,
       ("Precision-cut pieces that fit snugly", "Poster included", "Recycled board"),
       ("Board Games",)),
    _T("Toys & Games > Games > Board Games", "Board Game", ("tabletop game", "family game"),
       ("Strategy", "Party", "Cooperative"), (), ("2-4 players", "2-6 players"), (), 30,
       ("30-minute play time", "Easy to learn", "Ages 8 and up"), ("Jigsaw Puzzles",)),
    _T("Toys & Games > Plush > Stuffed Animals", "Stuffed Animal", ("plush toy", "teddy"),
       ("Bear", "Bunny", "Dinosaur"), ("Plush", "Cotton"), ("8 inch", "12 inch", "18 inch"),
       ("Brown", "White", "Pink", "Green"), 16,
       ("Super soft fabric", "Surface washable", "Safety-tested eyes"), ("Board Games",)),
    # Pet Supplies
    _T("Pet Supplies > Dogs > Dog Beds", "Dog Bed", ("pet bed", "dog cushion"),
       ("Orthopedic", "Bolster", "Donut"), ("Memory Foam", "Plush", "Canvas"),
       ("Small", "Medium", "Large", "X-Large"), _NEUTRAL, 45,
       ("Removable washable cover", "Non-skid bottom", "Supports aging joints"),
       ("Dog Leashes",)),
    _T("Pet Supplies > Dogs > Dog Leashes", "Dog Leash", ("dog lead", "pet leash"),
       ("Retractable", "Reflective", "Hands-Free"), ("Nylon", "Leather", "Rope"),
       ("4 ft", "6 ft", "16 ft"), _BRIGHT, 15,
       ("Padded handle", "Heavy-duty clip", "Night-visible stitching"), ("Dog Beds",)),
    _T("Pet Supplies > Cats > Cat Trees", "Cat Tree", ("cat tower", "cat condo"),
       ("Multi-Level", "Wall-Mounted", "Modern"), ("Sisal", "Plush", "Wood"),
       ("34 inch", "52 inch", "72 inch"), _NEUTRAL, 70,
       ("Sisal scratching posts", "Cozy hideaway condo", "Anti-tip wall strap"), ("Cat Toys",)),
    _T("Pet Supplies > Cats > Cat Toys", "Cat Toy Set", ("kitten toys", "cat teaser"),
       ("Interactive", "Feather Wand", "Catnip"), ("Plush", "Feather", "Plastic"),
       ("10 piece", "20 piece"), ("Multicolor",), 12,
       ("Variety of textures and sounds", "Refillable catnip pouch", "Keeps indoor cats active"),
       ("Cat Trees",)),
    # Office Products
    _T("Office Products > Office Furniture > Office Chairs", "Office Chair",
       ("desk chair", "computer chair"), ("Ergonomic", "Executive", "Mesh Back"),
       ("Mesh", "Leather", "Fabric"), ("Standard", "Big & Tall"), ("Black", "Grey", "White"),
       160, ("Adjustable lumbar support", "Flip-up armrests", "Quiet rolling casters"),
       ("Standing Desks",)),
    _T("Office Products > Office Furniture > Standing Desks", "Standing Desk",
       ("sit stand desk", "adjustable desk"), ("Electric", "Crank", "Corner"),
       ("Bamboo", "Laminate", "Walnut"), ("48 inch", "55 inch", "63 inch"), _WOOD, 300,
       ("Memory height presets", "Dual motors", "Cable management tray"), ("Office Chairs",)),
    _T("Office Products > Writing > Gel Pens", "Gel Pen Set", ("gel pens", "ink pens"),
       ("Retractable", "Fine Point", "Quick-Dry"), (), ("0.5 mm", "0.7 mm", "1.0 mm"),
       ("Black", "Blue", "Assorted"), 10,
       ("Smooth, skip-free ink", "Comfort grip", "Acid-free, archival quality"), ("Notebooks",)),
    _T("Office Products > Paper > Notebooks", "Notebook", ("journal", "notepad"),
       ("Spiral", "Hardcover", "Dotted"), ("Leather", "Kraft Paper", "Linen"), ("A5", "Letter"),
       ("Black", "Navy Blue", "Green", "Brown"), 12,
       ("120 gsm bleed-resistant paper", "Elastic closure", "Inner pocket"), ("Gel Pens",)),
)
# fmt: on
_TYPE_BY_PATH = {t.path: t for t in _TYPES}

# Attributes a query may name, in the order they appear in a query.
_QUERY_ORDER = ("brand", "color", "material", "style", "noun", "size")
_QUERY_TEMPLATES: tuple[tuple[str, ...], ...] = (
    ("color",),
    ("material",),
    ("brand",),
    ("style",),
    ("size",),
    ("color", "material"),
    ("material", "size"),
    ("brand", "color"),
    ("style", "size"),
    ("brand", "style"),
)
_PARAPHRASE_RATE = 0.35


def _pick(rng: np.random.Generator, values: Sequence[Any]) -> Any:
    return values[int(rng.integers(len(values)))]


def _lower(text: str) -> str:
    """Lower-case for running text, keeping acronyms ("PVC", "USB-C") as they are."""
    return " ".join(w if w.isupper() else w.lower() for w in text.split())


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([stream, seed])


def _make_item(rng: np.random.Generator, ptype: _ProductType, item_id: str) -> dict[str, Any]:
    brand = _pick(rng, _BRANDS[ptype.top])
    style = _pick(rng, ptype.styles)
    color = _pick(rng, ptype.colors) if ptype.colors else None
    material = _pick(rng, ptype.materials) if ptype.materials else None
    size = _pick(rng, ptype.sizes) if ptype.sizes else None

    words = [brand, color, material, style, ptype.noun]
    title = " ".join(w for w in words if w)
    if size:
        title = f"{title}, {size}"
    bullets = list(rng.permutation(ptype.features)[: int(rng.integers(2, len(ptype.features) + 1))])
    bullets = [str(b) for b in bullets]
    if material:
        bullets.append(f"Material: {material}")
    if size:
        bullets.append(f"Size: {size}")

    rating_count = int(np.floor(rng.lognormal(3.0, 1.6)))  # heavy-tailed popularity
    item: dict[str, Any] = {"item_id": item_id, "title": title}
    if rng.random() < 0.85:  # like the real catalogs, not every product has a description
        made_of = f", made of {_lower(material)}" if material else ""
        shade = f", in {_lower(color)}" if color else ""
        details = " ".join(f"{b}." for b in bullets[:2])
        item["description"] = (
            f"The {_lower(style)} {_lower(ptype.noun)} from {brand}{made_of}{shade}. {details}"
        )
    item["brand"] = brand
    item["category"] = ptype.path
    item["bullets"] = bullets
    if color:
        item["color"] = color
    item["price"] = round(float(rng.lognormal(np.log(ptype.price), 0.35)), 2)
    if rating_count > 0:
        item["rating"] = round(float(np.clip(rng.normal(4.2, 0.5), 1.0, 5.0)), 1)
    item["rating_count"] = rating_count
    item["in_stock"] = bool(rng.random() < 0.9)
    item["margin"] = round(float(rng.uniform(0.05, 0.6)), 3)
    # Extra attributes: the catalog reader keeps them as typed columns.
    if material:
        item["material"] = material
    if size:
        item["size"] = size
    item["style"] = style
    return item


def _asin_like(rng: np.random.Generator, taken: set[str]) -> str:
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    while True:
        candidate = "B0" + "".join(alphabet[i] for i in rng.integers(0, 36, 8))
        if candidate not in taken:
            taken.add(candidate)
            return candidate


def make_catalog(n_items: int = 2000, *, seed: int = 0) -> list[dict[str, Any]]:
    """Make ``n_items`` products over ~45 product types in 10 top categories.

    Each record has the ``products.jsonl.gz`` fields (item_id, title, description (mostly),
    brand, category as a " > " breadcrumb, bullets, color (most types), price, rating (when
    rated), rating_count, in_stock, margin) plus the extra attributes ``material`` and
    ``size`` (where the type has them) and ``style``. Types are dealt round-robin, so every
    type has items once ``n_items`` >= the number of types. Sorted by item_id, like the real
    files. Deterministic for ``seed``.
    """
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    rng = _rng(seed, _STREAM_CATALOG)
    type_order = rng.permutation(len(_TYPES))
    taken: set[str] = set()
    items = [
        _make_item(rng, _TYPES[int(type_order[i % len(_TYPES)])], _asin_like(rng, taken))
        for i in range(n_items)
    ]
    items.sort(key=lambda item: item["item_id"])
    return items


def _query_words(
    target: dict[str, Any],
    ptype: _ProductType,
    attrs: tuple[str, ...],
    paraphrase: bool,
    rng: np.random.Generator,
) -> str:
    words = []
    for attr in _QUERY_ORDER:
        if attr == "noun":
            words.append(_pick(rng, ptype.synonyms) if paraphrase else ptype.noun.lower())
        elif attr in attrs:
            words.append(str(target[attr]).lower())
    return " ".join(words)


def make_labeled_queries(
    catalog: list[dict[str, Any]], n_queries: int, *, seed: int = 0
) -> list[dict[str, Any]]:
    """Make ``n_queries`` distinct queries with ESCI-graded judgments over ``catalog``.

    A query names a product type plus one or two attributes of a target item ("red velvet
    sofa", "ironforge skillet", "cast iron skillet 12 inch"); about a third use a synonym for
    the type ("couch"). Grades: 3 for every item of the type matching all named attributes
    (so at least the target), 2 for a few items of the type that differ in one, 1 for a few
    items of a complementary type in the same top category, 0 for a few random items of
    other top categories.

    Args:
        catalog: records from ``make_catalog`` (the category breadcrumb identifies the type).

    Returns:
        Label rows ``{query_id, query, item_id, grade, esci_label}``, grouped by query in
        query_id order ("1", "2", ...), items sorted by id within a query.

    Raises:
        ValueError: a record whose category is not a synthetic product type, or a catalog too
            small to give ``n_queries`` distinct queries.
    """
    if n_queries < 1:
        raise ValueError(f"n_queries must be >= 1, got {n_queries}")
    by_type: dict[str, list[int]] = {}
    for i, item in enumerate(catalog):
        if item.get("category") not in _TYPE_BY_PATH:
            raise ValueError(
                f"catalog record {item.get('item_id')!r} has category {item.get('category')!r}, "
                "which is not a synthetic product type; pass records from make_catalog()"
            )
        by_type.setdefault(item["category"], []).append(i)
    rng = _rng(seed, _STREAM_QUERIES)
    rows: list[dict[str, Any]] = []
    seen_queries: set[str] = set()
    attempts = 0
    while len(seen_queries) < n_queries:
        attempts += 1
        if attempts > 50 * n_queries + 1000:
            raise ValueError(
                f"could only make {len(seen_queries)} distinct queries of {n_queries} from "
                f"{len(catalog)} items; ask for fewer queries or a larger catalog"
            )
        target = catalog[int(rng.integers(len(catalog)))]
        ptype = _TYPE_BY_PATH[target["category"]]
        attrs = _pick(rng, _QUERY_TEMPLATES)
        if any(target.get(a) is None for a in attrs):
            continue
        query = _query_words(target, ptype, attrs, rng.random() < _PARAPHRASE_RATE, rng)
        if query in seen_queries:
            continue
        seen_queries.add(query)

        grades: dict[str, int] = {}
        same_type = by_type[ptype.path]
        differing = []
        for i in same_type:
            item = catalog[i]
            if all(item.get(a) == target[a] for a in attrs):
                grades[item["item_id"]] = 3
            else:
                differing.append(item["item_id"])
        for item_id in _sample(rng, differing, 5):
            grades[item_id] = 2
        complements = [
            catalog[i]["item_id"]
            for leaf in ptype.complements
            for i in by_type.get(_leaf_path(ptype, leaf), [])
        ]
        for item_id in _sample(rng, complements, 3):
            grades[item_id] = 1
        others = [
            item["item_id"]
            for item in _sample(rng, catalog, 12)
            if _TYPE_BY_PATH[item["category"]].top != ptype.top
        ]
        for item_id in others[:4]:
            grades.setdefault(item_id, 0)
        query_id = str(len(seen_queries))
        rows.extend(
            {
                "query_id": query_id,
                "query": query,
                "item_id": item_id,
                "grade": grade,
                "esci_label": _ESCI_LABELS[grade],
            }
            for item_id, grade in sorted(grades.items())
        )
    return rows


def _leaf_path(ptype: _ProductType, leaf: str) -> str:
    for other in _TYPES:
        if other.top == ptype.top and other.leaf == leaf:
            return other.path
    raise AssertionError(f"{ptype.path}: complement {leaf!r} is not a leaf of {ptype.top}")


def _sample(rng: np.random.Generator, values: Sequence[Any], k: int) -> list[Any]:
    if len(values) <= k:
        return list(values)
    return [values[int(i)] for i in rng.choice(len(values), size=k, replace=False)]


def _make_histories(
    catalog: list[dict[str, Any]], n_users: int, *, seed: int
) -> dict[str, list[str]]:
    """User → item ids, each user browsing mostly within one or two top categories."""
    rng = _rng(seed, _STREAM_USERS)
    # Popular items are seen more often; the square root keeps the head from dominating.
    weight = np.sqrt(np.array([item["rating_count"] + 1.0 for item in catalog]))
    by_top: dict[str, list[int]] = {}
    by_leaf: dict[str, list[int]] = {}
    for i, item in enumerate(catalog):
        by_top.setdefault(_TYPE_BY_PATH[item["category"]].top, []).append(i)
        by_leaf.setdefault(item["category"], []).append(i)
    tops = sorted(by_top)

    def draw(pool: list[int]) -> int:
        w = weight[pool]
        return pool[int(rng.choice(len(pool), p=w / w.sum()))]

    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    histories: dict[str, list[str]] = {}
    while len(histories) < n_users:
        user_id = "A" + "".join(alphabet[i] for i in rng.integers(0, 36, 13))
        if user_id in histories:
            continue
        favorites = list(
            rng.choice(tops, size=min(len(tops), 1 + int(rng.random() < 0.4)), replace=False)
        )
        length = min(2 + int(rng.geometric(0.25)), 50) + 1  # train positions 0..n-1, dev n
        sequence: list[int] = []
        for _ in range(length):
            previous = sequence[-1] if sequence else None
            if previous is not None and rng.random() < 0.4:
                pool = by_leaf[catalog[previous]["category"]]  # keep shopping the same type
            elif rng.random() < 0.85:
                pool = by_top[str(_pick(rng, favorites))]
            else:
                pool = list(range(len(catalog)))
            sequence.append(draw(pool))
        histories[user_id] = [catalog[i]["item_id"] for i in sequence]
    return dict(sorted(histories.items()))


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write rows as compact JSON lines, gzipped when the name ends in .gz; atomic."""
    data = "".join(
        json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n" for row in rows
    ).encode("utf-8")
    with atomic_path(path) as tmp, open(tmp, "wb") as raw:
        if path.name.endswith(".gz"):
            # mtime=0 and no file name in the header: same seed → same bytes.
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
                gz.write(data)
        else:
            raw.write(data)


def write_synthetic_dataset(
    out_dir: str | Path,
    *,
    n_items: int = 2000,
    n_queries: int = 200,
    n_users: int = 300,
    seed: int = 0,
) -> dict[str, Path]:
    """Write a complete synthetic dataset in the real datasets' schema.

    Files: ``products.jsonl.gz``, ``queries_{train,dev}.jsonl``,
    ``labels_{train,dev}.jsonl.gz`` (queries split 80/20 by query) and
    ``interactions_{train,dev}.jsonl.gz`` (train: positions 0..n-1 per user, dev: position n).

    Returns:
        File stem → path: "products", "queries_train", "queries_dev", "labels_train",
        "labels_dev", "interactions_train", "interactions_dev".
    """
    if n_queries < 2:
        raise ValueError(f"n_queries must be >= 2 so train and dev both get one, got {n_queries}")
    if n_users < 1:
        raise ValueError(f"n_users must be >= 1, got {n_users}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    catalog = make_catalog(n_items, seed=seed)
    labels = make_labeled_queries(catalog, n_queries, seed=seed)
    histories = _make_histories(catalog, n_users, seed=seed)

    query_ids = list(dict.fromkeys(row["query_id"] for row in labels))
    n_dev = max(1, round(0.2 * len(query_ids)))
    shuffled = [query_ids[int(i)] for i in _rng(seed, _STREAM_SPLIT).permutation(len(query_ids))]
    split_of = {qid: "dev" for qid in shuffled[:n_dev]} | {qid: "train" for qid in shuffled[n_dev:]}

    paths = {"products": out / "products.jsonl.gz"}
    _write_jsonl(paths["products"], catalog)
    for split in ("train", "dev"):
        rows = [row for row in labels if split_of[row["query_id"]] == split]
        queries = {row["query_id"]: row["query"] for row in rows}
        paths[f"queries_{split}"] = out / f"queries_{split}.jsonl"
        _write_jsonl(
            paths[f"queries_{split}"], ({"query_id": q, "query": t} for q, t in queries.items())
        )
        paths[f"labels_{split}"] = out / f"labels_{split}.jsonl.gz"
        _write_jsonl(paths[f"labels_{split}"], rows)
    train_rows = (
        {"user_id": user, "item_id": item, "position": position}
        for user, items in histories.items()
        for position, item in enumerate(items[:-1])
    )
    dev_rows = (
        {"user_id": user, "item_id": items[-1], "position": len(items) - 1}
        for user, items in histories.items()
    )
    for split, rows in (("train", train_rows), ("dev", dev_rows)):
        paths[f"interactions_{split}"] = out / f"interactions_{split}.jsonl.gz"
        _write_jsonl(paths[f"interactions_{split}"], rows)
    logger.info(
        "wrote %d items, %d queries (%d dev), %d users to %s",
        len(catalog),
        len(query_ids),
        n_dev,
        len(histories),
        out,
    )
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: write a synthetic dataset; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m trainer.data.synthetic",
        description="Write a small synthetic e-commerce dataset (catalog, graded queries, "
        "user histories) in the schema of the real datasets.",
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--items", type=int, default=2000, help="number of products")
    parser.add_argument("--queries", type=int, default=200, help="number of labeled queries")
    parser.add_argument("--users", type=int, default=300, help="number of users with histories")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        paths = write_synthetic_dataset(
            args.out,
            n_items=args.items,
            n_queries=args.queries,
            n_users=args.users,
            seed=args.seed,
        )
    except ValueError as e:
        logger.error("%s", e)
        return 2
    for name, path in paths.items():
        logger.info("%s: %s", name, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

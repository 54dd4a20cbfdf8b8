"""End to end with the real packaged all-MiniLM-L6-v2: a paraphrase finds the right product."""

from __future__ import annotations

import json

import pytest

from engine.client import AisleClient
from engine.server import ServerConfig, create_server
from indexer.build.config import BuildConfig
from indexer.build.local import build_index

PRODUCTS = [
    ("P01", "Crimson Velvet Three-Seat Sofa", "Home > Furniture > Sofas"),
    ("P02", "Oak Dining Table for Six", "Home > Furniture > Tables"),
    ("P03", "Stainless Steel Cordless Drill 20V with Two Batteries", "Tools > Power Tools"),
    ("P04", "Wireless Noise Cancelling Over-Ear Headphones", "Electronics > Audio"),
    ("P05", "Pre-Seasoned Cast Iron Skillet, 12 Inch", "Kitchen > Cookware"),
    ("P06", "Men's Lightweight Running Shoes", "Clothing > Shoes"),
    ("P07", "Organic Cotton Bath Towel Set", "Home > Bath"),
    ("P08", "LED Desk Lamp with USB Charging Port", "Home > Lighting"),
    ("P09", "Electric Gooseneck Kettle for Pour-Over Coffee", "Kitchen > Appliances"),
    ("P10", "Waterproof Hiking Backpack 40L", "Outdoors > Bags"),
    ("P11", "Kids Building Blocks Set, 500 Pieces", "Toys > Construction"),
    ("P12", "Dog Chew Toy for Large Breeds", "Pets > Dog Toys"),
    ("P13", "Yoga Mat, Non-Slip, 6mm", "Sports > Fitness"),
    ("P14", "Smartphone Tripod with Bluetooth Remote", "Electronics > Camera Accessories"),
    ("P15", "Ceramic Plant Pot with Drainage Hole", "Garden > Planters"),
    ("P16", "Memory Foam Bed Pillow, Queen", "Home > Bedding"),
]

PARAPHRASES = [
    ("comfy red couch for the living room", "P01"),
    ("battery powered screwdriver drill", "P03"),
    ("headset that blocks out sound", "P04"),
    ("iron frying pan", "P05"),
    ("sneakers for jogging", "P06"),
    ("bedside reading light", "P08"),
    ("water boiler for making coffee", "P09"),
    ("toy for my puppy to chew on", "P12"),
]


@pytest.mark.slow
def test_paraphrases_find_the_right_item(tmp_path) -> None:
    catalog = tmp_path / "products.jsonl"
    with catalog.open("w") as f:
        for item_id, title, category in PRODUCTS:
            f.write(json.dumps({"item_id": item_id, "title": title, "category": category}) + "\n")
    root = tmp_path / "index"
    build_index(BuildConfig(catalog=catalog, out=root, shards=2))  # the packaged base model
    server = create_server(ServerConfig(index=root, port=0))
    try:
        with AisleClient(f"127.0.0.1:{server.port}") as client:
            for query, expected in PARAPHRASES:
                top3 = [h.item_id for h in client.search(query, 3).hits]
                assert expected in top3, (query, top3)
    finally:
        server.stop(0)

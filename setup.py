"""Packaging for mgmt_nb: every field comes from settings.ini, the nbdev 2 project file."""
from configparser import ConfigParser

import setuptools

config = ConfigParser(delimiters=["="])
config.read("settings.ini", encoding="utf-8")
cfg = config["DEFAULT"]

required = ["version", "description", "keywords", "author", "author_email", "lib_name", "min_python", "license"]
missing = [key for key in required if key not in cfg]
if missing:
    raise SystemExit(f"settings.ini is missing {missing}; add them under [DEFAULT].")

licenses = {"apache2": "Apache-2.0"}  # SPDX expressions, which setuptools 77 and later expect in place of licence classifiers
statuses = ["Planning", "Pre-Alpha", "Alpha", "Beta", "Production/Stable", "Mature", "Inactive"]
python_versions = ["3.10", "3.11", "3.12"]
license_expression = licenses[cfg["license"]]
min_python = cfg["min_python"]

requirements = cfg.get("requirements", "").split()
dev_requirements = cfg.get("dev_requirements", "").split()
console_scripts = cfg.get("console_scripts", "").split()

with open("README.md", encoding="utf-8") as readme:
    long_description = readme.read()

setuptools.setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    license=license_expression,
    classifiers=[
        f"Development Status :: {cfg['status']} - {statuses[int(cfg['status'])]}",
        f"Intended Audience :: {cfg['audience']}",
        f"Natural Language :: {cfg['language']}",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
    ]
    + [f"Programming Language :: Python :: {v}" for v in python_versions[python_versions.index(min_python):]],
    url=cfg["git_url"],
    packages=setuptools.find_packages(include=[cfg["lib_name"], f"{cfg['lib_name']}.*"]),
    include_package_data=True,
    install_requires=requirements,
    extras_require={"dev": dev_requirements},
    python_requires=f">={min_python}",
    long_description=long_description,
    long_description_content_type="text/markdown",
    zip_safe=False,
    entry_points={"console_scripts": console_scripts, "nbdev": [f"{cfg['lib_name']}={cfg['lib_name']}._modidx:d"]},
    author=cfg["author"],
    author_email=cfg["author_email"],
    description=cfg["description"],
    keywords=cfg["keywords"],
)

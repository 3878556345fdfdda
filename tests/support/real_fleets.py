"""Real public logs (../shared/data) laid out as drives in a landing zone: ``<market>/<drive_id>/<files>``.

``us`` carries its DBCs at market level (``us/_dbc``: one OBD2 car with a CANmod GNSS/IMU module); ``de`` drives
bring their own DBCs in the drive folder (each is another vehicle); ``jp`` holds the MCAP recordings and ``cn``
decoded-signal MDF4 measurements. Files are copied (the shared folder is read-only; the landing zone moves bad
files to quarantine). docs/real-fleets.md lists every drive and its outcome.
"""

from __future__ import annotations

import shutil
from pathlib import Path

RAW = "mdf4/canedge_raw/"
MARKET_DBCS = {"us": ["dbc/OBD-v4.4.dbc", "dbc/canmod-gps.dbc"]}
DRIVES: dict[str, dict[str, list[str]]] = {
    "us": {
        "obd-car-3ba199e2-s164": [
            RAW + f"cssapi__other_matlab-basics_LOG_datastore_3BA199E2_00000164_0000000{i}-{suffix}.MF4"
            for i, suffix in ((1, "60FE3F04"), (2, "60FE415D"), (3, "60FE43B2"))
        ],
        "obd-car-3ba199e2-s165": [
            RAW + "cssapi__other_matlab-basics_LOG_datastore_3BA199E2_00000165_00000006-60FFE42F.MF4"
        ],
        "obd2-11bit": [RAW + "mdf4rs__11-bit-obd2.MF4"],
        "obd2-29bit": [RAW + "mdf4rs__29-bit-obd2.MF4"],
        "wwh-obd-truck": [RAW + "mdf4rs__29-bit-wwh-obd.MF4"],
    },
    "de": {
        "kona-ev-uds": [RAW + "cssapi__data-processing_LOG_17BD1DB7_00000006_00000170.MF4", "dbc/tp_uds.dbc"],
        "leaf-ev-uds-gnss": [
            RAW + "cssapi__data-processing_LOG_2F6913DB_00000004_00000001.MF4",
            "dbc/tp_uds_nissan.dbc",
            "dbc/canmod-gps.dbc",
        ],
        "kia-ev-two-files": [
            RAW + "cssapi__other_concatenate-mf4-by-period_LOG_2F6913DB_00001089_00000001-63BEF5CD.MF4",
            RAW + "cssapi__other_concatenate-mf4-by-period_LOG_2F6913DB_00001089_00000002-63BEFDF9.MF4",
            "dbc/gnss.dbc",
            "dbc/tp_uds.dbc",
        ],
        "uds-test-0d2c6546": [
            RAW + "cssapi__data-processing_LOG_TP_0D2C6546_00000027_00000002-5EF3CA81.MF4",
            "dbc/tp_uds_test.dbc",
        ],
        "j1939-truck": [
            RAW + "cssapi__data-processing_LOG_FCBF0606_00003482_00000001-60B621D9.MF4",
            "dbc/CSS-Electronics-SAE-J1939-DEMO.dbc",
        ],
        "j1939-truck-tp": [
            RAW + "cssapi__data-processing_LOG_TP_FCBF0606_00002058_00000001-5FAB8E54.mf4",
            "dbc/CSS-Electronics-SAE-J1939-DEMO.dbc",
        ],
        "j1939-truck-gnss": [
            RAW + "cssapi__other_matlab-basics_LOG_11111111_00000012_00000001.MF4",
            "dbc/CSS-Electronics-SAE-J1939-DEMO.dbc",
            "dbc/canmod-gps.dbc",
        ],
        "j1939-truck-canedge3": [
            RAW + "cssapi__other_asammdf-basics_input_00000001.MF4",
            "dbc/CSS-Electronics-SAE-J1939-DEMO.dbc",
            "dbc/can9-database-01.09.dbc",
        ],
        "nmea2000-boat": [RAW + "cssapi__data-processing_LOG_94C49784_00000005_00000002.MF4", "dbc/tp_nmea.dbc"],
        "bench-traffic": [
            RAW + "cssapi__other_matlab-basics_00000014_fin.MF4",
            "dbc/cssapi__other_matlab-basics_my_dbc.DBC",
        ],
        "j1939-no-dbc": [RAW + "cssapi__data-processing_LOG_00000000_00000048_00000001.MF4"],
    },
    "jp": {
        "camera-json": ["mcap/lichtblick__custom-camera-model.mcap"],
        "lidar-2d": ["mcap/rplidar-zenoh__out.mcap"],
        "ros2-sensors": ["mcap/rerun__crates_store_re_data_loader_tests_assets_rosbag2_2025_09_10-13_03_56_0.mcap"],
        "ros2-all-types": ["mcap/rosbags-rs__tests_test_bags_test_bag_mcap_test_bag_mcap.mcap"],
        "ros2-split": [
            f"mcap/rosbag2__rosbag2_py_test_resources_mcap_reindex_test_bags_multiple_files_multiple_files_{i}.mcap"
            for i in range(3)
        ],
        "ros2-services": ["mcap/rosbag2__rosbag2_cpp_test_rosbag2_cpp_bags_topics_and_services.mcap"],
        "camera-metadata": ["mcap/depthai__recording.mcap"],
        "osi-simulation": [
            "mcap/qc-osi-trace__tests_data_deserialization_expected_version_deserialization_expected_version_360.mcap"
        ],
        "relative-clock": ["mcap/pj-plugins__data_load_mcap_test_data_test_publish_vs_log_time.mcap"],
    },
    "cn": {
        "ecu-measurement": ["mdf4/other/mf4rust__1.mf4"],
        "canape-measurement": ["mdf4/vendor_examples/openatfx__Vector_CANape.MF4"],
        "vendor-decoded-3ba199e2": [
            "mdf4/canedge_decoded/cssapi__other_matlab-basics_LOG_mf4_decoded_3BA199E2_00000165_00000006-60FFE42F.mf4"
        ],
    },
}


def build_landing(shared_data: Path, landing: Path) -> list[tuple[str, str]]:
    """Copy the real files into ``landing`` as drives; returns (market, drive_id) of every drive."""
    for market, dbcs in MARKET_DBCS.items():
        (landing / market / "_dbc").mkdir(parents=True)
        for rel in dbcs:
            shutil.copy(shared_data / rel, landing / market / "_dbc")
    built = []
    for market, drives in DRIVES.items():
        for drive_id, files in drives.items():
            folder = landing / market / drive_id
            folder.mkdir(parents=True)
            for rel in files:
                shutil.copy(shared_data / rel, folder)
            built.append((market, drive_id))
    return built
